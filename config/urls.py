from django.contrib import admin
from django.urls import path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.authtoken.views import obtain_auth_token

from marketplace import api as bot_api
from marketplace import demo

from . import health

handler400 = "config.errors.json_bad_request"
handler404 = "config.errors.json_not_found"
handler500 = "config.errors.json_server_error"

urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("api/v1/auth/token", obtain_auth_token, name="auth-token"),
    path("api/v1/escalations", bot_api.EscalationCreateApi.as_view(), name="escalation-create"),
    path("api/v1/escalations/<str:conversation_id>", bot_api.EscalationDetailApi.as_view(), name="escalation-detail"),
    path(
        "api/v1/escalations/<str:conversation_id>/messages",
        bot_api.EscalationMessageApi.as_view(),
        name="escalation-messages",
    ),
    path(
        "api/v1/escalations/<str:conversation_id>/cancel",
        bot_api.EscalationCancelApi.as_view(),
        name="escalation-cancel",
    ),
    path(
        "api/v1/escalations/<str:conversation_id>/rating",
        bot_api.EscalationRatingApi.as_view(),
        name="escalation-rating",
    ),
    path("demo/bot/callbacks", demo.DemoBotCallbackView.as_view(), name="demo-bot-callbacks"),
    path("admin/", admin.site.urls),
]
