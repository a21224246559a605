"""A stand-in bot for the demo: receives the platform's callbacks and shows them.

`seed_demo` points the demo integration's callback URL here, so `make run`
shows the whole round trip with no other program. It checks the signature like
a real bot would: the v2 over "<t>.callback.<body>". Off unless settings.DEMO_ENDPOINTS (on with DEBUG).
"""

from __future__ import annotations

import json
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.utils.decorators import method_decorator
from django.views import View
from django.views.decorators.csrf import csrf_exempt

from . import signing
from .models import BotIntegration

_KEY = "demo-bot.events"


@method_decorator(csrf_exempt, name="dispatch")
class DemoBotCallbackView(View):
    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not settings.DEMO_ENDPOINTS:
            raise Http404
        return super().dispatch(request, *args, **kwargs)

    def get(self, request: HttpRequest) -> JsonResponse:
        return JsonResponse({"received": cache.get(_KEY, [])})

    def post(self, request: HttpRequest) -> HttpResponse:
        signature = request.headers.get("X-Platform-Signature", "")
        url = request.build_absolute_uri()
        secrets = BotIntegration.objects.filter(callback_url=url).values_list("secret", flat=True)
        if not any(signing.verify_callback(s, request.body, signature, 300) for s in secrets):
            return JsonResponse({"error": {"code": "unauthorized", "detail": "Bad signature."}}, status=401)
        event = json.loads(request.body)
        received = [event, *cache.get(_KEY, [])][:50]
        cache.set(_KEY, received, timeout=None)
        return HttpResponse(status=204)
