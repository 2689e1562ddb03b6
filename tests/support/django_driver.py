"""Drives the Django example's views with Django's test client, inside .venv-django
(tests/test_django_notify.py runs it with the example on ``PYTHONPATH``).

``python django_driver.py token USER`` | ``notify USER TEXT`` | ``sign-out USER`` |
``notify-raw USER BODY``: prints ``RESULT:{"status": ..., "body": ...}``.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "notify_site.settings")

import django

django.setup()

from django.test import Client  # noqa: E402


def main(argv: list[str]) -> None:
    client = Client()
    command, user = argv[0], argv[1]
    if command == "token":
        response = client.get(f"/token/{user}/")
    elif command == "notify":
        response = client.post(f"/notify/{user}/", data=json.dumps({"text": argv[2]}),
                               content_type="application/json")
    elif command == "notify-raw":
        response = client.post(f"/notify/{user}/", data=argv[2],
                               content_type="application/json")
    elif command == "sign-out":
        response = client.post(f"/sign-out-everywhere/{user}/")
    elif command == "get-notify":
        response = client.get(f"/notify/{user}/")
    else:
        raise SystemExit(f"unknown command {command!r}")
    try:
        body = response.json()
    except ValueError:
        body = response.content.decode(errors="replace")
    print("RESULT:" + json.dumps({"status": response.status_code, "body": body}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
