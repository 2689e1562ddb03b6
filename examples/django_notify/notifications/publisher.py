"""One publisher per process, shared by every thread (Publisher is thread-safe, and a forked
worker process opens its own connection). It connects on first use."""

from functools import cache

from django.conf import settings

from channels.publisher import Publisher


@cache
def get_publisher() -> Publisher:
    return Publisher(settings.TRIO_CHANNELS_REDIS_URL, timeout=2.0, connect_timeout=2.0)
