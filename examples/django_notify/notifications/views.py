"""Views that reach users connected to trio-channels.

In a real project these run behind your authentication: the token view for the logged-in user
(``request.user.pk``), the others for staff or for your own code (a signal handler, a Celery
task: ``get_publisher().broadcast(...)`` works the same there).
"""

import json
import time

from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET, require_POST

from channels.publisher import PublishError
from channels.tokens import sign_token

from .publisher import get_publisher


@require_GET
def socket_token(request: HttpRequest, user_id: int) -> JsonResponse:
    """The token the browser connects with (``new Socket("/socket", {params: {token}})``)."""
    token = sign_token(settings.NOTIFY_SECRET, "user socket", user_id)
    return JsonResponse({"token": token, "topic": f"notifications:{user_id}"})


@require_POST
def notify(request: HttpRequest, user_id: int) -> JsonResponse:
    """Push a notification to every open tab of a user, on whichever node they are."""
    try:
        text = json.loads(request.body)["text"]
    except (ValueError, KeyError, TypeError):
        return JsonResponse({"error": 'expected {"text": "..."}'}, status=400)
    if not isinstance(text, str) or not text:
        return JsonResponse({"error": "text must be a non-empty string"}, status=400)
    try:
        nodes = get_publisher().broadcast(f"notifications:{user_id}", "notification",
                                          {"text": text, "at": int(time.time() * 1000)})
    except PublishError as exc:
        return JsonResponse({"sent": False, "error": str(exc)}, status=503)
    return JsonResponse({"sent": True, "nodes": nodes})


@require_POST
def sign_out_everywhere(request: HttpRequest, user_id: int) -> JsonResponse:
    """Close every real-time connection of a user (after a password change, say)."""
    try:
        get_publisher().disconnect(f"user_socket:{user_id}")
    except PublishError as exc:
        return JsonResponse({"sent": False, "error": str(exc)}, status=503)
    return JsonResponse({"sent": True})
