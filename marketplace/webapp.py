"""The agents' mobile web app at /app/: a login page and one shell page; the rest is
static JavaScript talking to the REST API and the WebSocket with the session cookie."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.templatetags.static import static
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import ensure_csrf_cookie
from django.views.decorators.http import require_GET

from . import access
from .models import Agent

APP_NAME = "Agent Desk"


class AppLoginView(auth_views.LoginView):
    template_name = "app/login.html"
    redirect_authenticated_user = True
    next_page = "/app/"
    extra_context = {"app_name": APP_NAME}


class AppLogoutView(auth_views.LogoutView):
    next_page = "/app/login"

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        """Log out, and close the sockets opened with this session."""
        user_id, session_key = request.user.pk, request.session.session_key
        response = super().post(request, *args, **kwargs)
        if user_id is not None:
            access.session_revoke(user_id=user_id, session_key=session_key)
        return response


@never_cache
@ensure_csrf_cookie  # the app's fetch() calls send it back as X-CSRFToken
@login_required(login_url="/app/login")
def shell(request: HttpRequest) -> HttpResponse:
    agent = Agent.objects.filter(user=request.user).first()
    if agent is None:  # staff or another kind of user: no app to show, and no login loop
        return render(request, "app/not_an_agent.html", {"app_name": APP_NAME}, status=403)
    return render(
        request,
        "app/shell.html",
        {"app_name": APP_NAME, "agent": agent, "offer_timeout": settings.OFFER_TIMEOUT_SECONDS},
    )


@require_GET
def service_worker(request: HttpRequest) -> HttpResponse:
    """Served under /app/ so that its scope is the app; it caches the shell's static files only."""
    assets = [static(path) for path in ("app/app.css", "app/app.js", "app/icon-192.png", "app/icon-512.png")]
    response = render(request, "app/sw.js", {"assets": assets}, content_type="text/javascript")
    response["Service-Worker-Allowed"] = "/app/"
    response["Cache-Control"] = "no-cache"
    return response


@require_GET
def manifest(request: HttpRequest) -> HttpResponse:
    return render(
        request,
        "app/manifest.webmanifest",
        {"app_name": APP_NAME, "icon192": static("app/icon-192.png"), "icon512": static("app/icon-512.png")},
        content_type="application/manifest+json",
    )
