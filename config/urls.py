from django.contrib import admin
from django.urls import path, re_path, register_converter
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from core import errors
from dispatch import agent_api as agent_me_api
from dispatch import bot_api
from marketplace import agent_api, demo, webapp
from payouts import api as payouts_api

from . import health


class IdConverter:
    """Our ids are short ASCII (conv_..., ofr_...): anything else is simply not found."""

    regex = "[A-Za-z0-9_-]{1,64}"

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: str) -> str:
        return value


register_converter(IdConverter, "id")

handler400 = "core.errors.json_bad_request"
handler404 = "core.errors.json_not_found"
handler500 = "core.errors.json_server_error"

urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("api/v1/auth/token", agent_api.AuthTokenApi.as_view(), name="auth-token"),
    path("api/v1/auth/logout", agent_api.LogoutApi.as_view(), name="auth-logout"),
    path("api/v1/escalations", bot_api.EscalationCreateApi.as_view(), name="escalation-create"),
    path("api/v1/escalations/<id:conversation_id>", bot_api.EscalationDetailApi.as_view(), name="escalation-detail"),
    path(
        "api/v1/escalations/<id:conversation_id>/messages",
        bot_api.EscalationMessageApi.as_view(),
        name="escalation-messages",
    ),
    path(
        "api/v1/escalations/<id:conversation_id>/cancel",
        bot_api.EscalationCancelApi.as_view(),
        name="escalation-cancel",
    ),
    path(
        "api/v1/escalations/<id:conversation_id>/reopen",
        bot_api.EscalationReopenApi.as_view(),
        name="escalation-reopen",
    ),
    path(
        "api/v1/escalations/<id:conversation_id>/rating",
        bot_api.EscalationRatingApi.as_view(),
        name="escalation-rating",
    ),
    path("api/v1/agent/me", agent_me_api.AgentMeApi.as_view(), name="agent-me"),
    path("app/", webapp.shell, name="app"),
    path("app/payouts", webapp.shell, name="app-payouts"),
    path("app/login", webapp.AppLoginView.as_view(), name="app-login"),
    path("app/logout", webapp.AppLogoutView.as_view(), name="app-logout"),
    path("app/sw.js", webapp.service_worker, name="app-sw"),
    path("app/manifest.webmanifest", webapp.manifest, name="app-manifest"),
    path("api/v1/agent/payouts/onboarding", payouts_api.OnboardingApi.as_view(), name="payouts-onboarding"),
    path("api/v1/agent/payouts", payouts_api.PayoutStatusApi.as_view(), name="payouts-status"),
    path("api/v1/agent/earnings", payouts_api.EarningsApi.as_view(), name="earnings"),
    path("webhooks/stripe/", payouts_api.StripeWebhookView.as_view(), name="stripe-webhook"),
    path("demo/bot/callbacks", demo.DemoBotCallbackView.as_view(), name="demo-bot-callbacks"),
    path("admin/", admin.site.urls),
    # Whatever else is asked of the API is a JSON 404, in development too.
    re_path(r"^api/", errors.json_not_found),
]
