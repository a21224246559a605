"""ASGI entry point: HTTP through Django, WebSockets through Channels, both behind core/edge.py."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
django_asgi_app = get_asgi_application()  # before importing anything that touches models

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.conf import settings  # noqa: E402

from config.routing import websocket_urlpatterns  # noqa: E402
from core import edge, gc_policy, jobs  # noqa: E402
from dispatch.auth import AgentAuthMiddleware  # noqa: E402

# Daphne imports this module before it listens: from then on it counts request bodies as they arrive.
edge.install_daphne_body_limit()

application = edge.with_edge(
    ProtocolTypeRouter(
        {
            "http": edge.IntakeLimitMiddleware(edge.BodyLimitMiddleware(django_asgi_app)),
            "websocket": AgentAuthMiddleware(URLRouter(websocket_urlpatterns)),
        }
    )
)

if settings.RUN_PERIODIC_IN_PROCESS:
    jobs.start_periodic_jobs()

# Last: what start-up made is frozen out of the collector's way (core/gc_policy.py).
gc_policy.install_from_settings()
