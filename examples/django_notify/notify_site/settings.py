"""Settings of the example Django project: no database, just views that publish."""

import os

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "dev-only-django-secret-change-me")
DEBUG = os.environ.get("DJANGO_DEBUG") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]

INSTALLED_APPS = ["notifications"]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
]
ROOT_URLCONF = "notify_site.urls"
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True

# Where the trio-channels nodes meet (their --redis-url), and the secret they verify socket
# tokens with (realtime.py's NOTIFY_SECRET).
TRIO_CHANNELS_REDIS_URL = os.environ.get("TRIO_CHANNELS_REDIS_URL", "redis://127.0.0.1:6379")
NOTIFY_SECRET = os.environ.get("NOTIFY_SECRET", "dev-only-notify-secret-change-me")
