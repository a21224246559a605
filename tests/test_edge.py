"""The edge of the web process (core/edge.py): body limits, proxy headers, the socket's Origin, the CSP.

Large bodies go to a real Daphne process, whose memory is measured with psutil.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests
from asgiref.testing import ApplicationCommunicator
from django.core.asgi import get_asgi_application
from django.urls import path as url_path

from core import edge

from .processes import daphne_process, service_env

MIB = 1024 * 1024


# --- body limits, in a real Daphne ----------------------------------------------------------------------


def embedded_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A Daphne that needs no other server: the bodies never get as far as the database."""
    return service_env(
        DATABASE_URL=f"sqlite:///{tmp_path / 'edge.sqlite3'}",
        REDIS_URL="",
        CELERY_BROKER_URL="",
        TASK_RUNNER="thread",
        RUN_PERIODIC_IN_PROCESS="false",
        **{"LOG_LEVEL": "WARNING", **extra},
    )


class PeakRss(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.peak = self.process.memory_info().rss
        self.running = True
        self.start()

    def run(self) -> None:
        while self.running:
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.01)

    def stop(self) -> int:
        self.running = False
        self.join()
        return self.peak


def zeros(size: int) -> Iterator[bytes]:
    piece = b"0" * (64 * 1024)
    for start in range(0, size, len(piece)):
        yield piece[: size - start]


def raw_post(base: str, path: str, size: int, *, chunked: bool, expect_continue: bool = False) -> tuple[int, Any]:
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    headers = {"Content-Type": "application/json"}
    if not chunked:
        headers["Content-Length"] = str(size)
    try:
        if expect_continue:  # send the headers only, as a client waiting for 100 Continue does
            conn.putrequest("POST", path)
            for name, value in {**headers, "Expect": "100-continue"}.items():
                conn.putheader(name, value)
            conn.endheaders()
        else:
            conn.request("POST", path, body=zeros(size), headers=headers, encode_chunked=chunked)
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        conn.close()


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_200_mib_unauthenticated_post_gets_a_413_and_costs_the_server_under_64_mib(tmp_path, chunked):
    with daphne_process(embedded_env(tmp_path), tmp_path / "daphne.log") as (base, proc):
        assert requests.get(f"{base}/healthz", timeout=5).status_code == 200  # warm
        baseline = psutil.Process(proc.pid).memory_info().rss
        sampler = PeakRss(proc.pid)

        # when: 200 MiB to the bot API, with no credentials
        status, body = raw_post(base, "/api/v1/escalations", 200 * MIB, chunked=chunked)
        time.sleep(0.3)
        growth = sampler.stop() - baseline

        # then: refused in the API's error shape, and the body was never held
        assert status == 413
        assert body["error"]["code"] == "payload_too_large"
        assert growth < 64 * MIB, f"the server grew by {growth / MIB:.0f} MiB"
        # and: the server still answers
        assert requests.get(f"{base}/healthz", timeout=5).status_code == 200


def test_each_path_has_its_own_limit_in_a_real_daphne(tmp_path, settings):
    with daphne_process(embedded_env(tmp_path, LOG_LEVEL="INFO"), tmp_path / "daphne.log") as (base, _):
        bot, stripe, other = (
            settings.BOT_MAX_BODY_BYTES,
            settings.STRIPE_WEBHOOK_MAX_BYTES,
            settings.DATA_UPLOAD_MAX_MEMORY_SIZE,
        )
        # over the limit: 413 before the application
        assert raw_post(base, "/api/v1/escalations", bot + 1, chunked=False)[0] == 413
        assert raw_post(base, "/api/v1/escalations/conv_x/messages", bot + 1, chunked=True)[0] == 413
        assert raw_post(base, "/webhooks/stripe/", stripe + 1, chunked=True)[0] == 413
        assert raw_post(base, "/api/v1/auth/token", other + 1, chunked=False)[0] == 413
        # at the limit: the application answers (unauthenticated, or a bad signature)
        assert raw_post(base, "/api/v1/escalations", bot, chunked=False)[0] == 401
        assert raw_post(base, "/webhooks/stripe/", stripe, chunked=True)[0] != 413
        # a client that waits for 100 Continue gets the 413 instead, and sends nothing
        assert raw_post(base, "/api/v1/escalations", 200 * MIB, chunked=False, expect_continue=True)[0] == 413
        assert requests.get(f"{base}/healthz", timeout=5).status_code == 200
    # each refusal is one line of the log (the application, and so the access log, never saw it)
    assert (tmp_path / "daphne.log").read_text().count("413 /api/v1/escalations") == 3


# --- body limits, as ASGI middleware (any server) --------------------------------------------------------


async def asgi_post(path: str, pieces: list[bytes], content_length: int | None = None) -> tuple[int, Any, int]:
    """POST through BodyLimitMiddleware around Django; the status, the JSON and how many pieces were left unread."""
    headers = [(b"content-type", b"application/json")]
    if content_length is not None:
        headers.append((b"content-length", str(content_length).encode()))
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "", "headers": headers,
        "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000),
    }  # fmt: skip
    app = ApplicationCommunicator(edge.BodyLimitMiddleware(get_asgi_application()), scope)
    for n, piece in enumerate(pieces):
        await app.send_input({"type": "http.request", "body": piece, "more_body": n < len(pieces) - 1})
    start = await app.receive_output(timeout=10)
    body = await app.receive_output(timeout=10)
    unread = app.input_queue.qsize()
    await app.wait(timeout=10)
    return start["status"], json.loads(body["body"]), unread


@pytest.mark.django_db
async def test_the_middleware_refuses_a_declared_length_before_reading_anything(settings):
    limit = settings.BOT_MAX_BODY_BYTES
    status, body, unread = await asgi_post("/api/v1/escalations", [b"{}"] * 4, content_length=limit + 1)
    assert (status, body["error"]["code"], unread) == (413, "payload_too_large", 4)


@pytest.mark.django_db
async def test_the_middleware_stops_reading_a_chunked_body_at_the_limit(settings):
    piece = b" " * 64 * 1024
    pieces = [piece] * (settings.BOT_MAX_BODY_BYTES // len(piece) + 1) + [piece] * 10
    status, body, unread = await asgi_post("/api/v1/escalations", pieces)
    assert (status, body["error"]["code"]) == (413, "payload_too_large")
    assert unread == 10  # what came after the limit was never read


@pytest.mark.django_db
async def test_the_middleware_passes_a_body_within_the_limit():
    status, body, _ = await asgi_post("/api/v1/escalations", [b"{", b"}"])
    assert (status, body["error"]["code"]) == (401, "unauthorized")


def test_limits_by_path(settings):
    settings.BOT_MAX_BODY_BYTES, settings.STRIPE_WEBHOOK_MAX_BYTES, settings.REQUEST_MAX_BODY_BYTES = 10, 20, 30
    assert edge.body_limit("/api/v1/escalations") == 10
    assert edge.body_limit("/api/v1/escalations/conv_1/messages") == 10
    assert edge.body_limit("/webhooks/stripe/") == 20
    assert edge.body_limit("/api/v1/auth/token") == 30
    assert edge.body_limit("/admin/login/") == 30
    # uploads (API.md 7.2) get ATTACHMENT_MAX_BYTES and room for the multipart framing
    settings.ATTACHMENT_MAX_BYTES = 1000
    assert edge.body_limit("/api/v1/escalations/conv_1/attachments") == 1000 + edge.MULTIPART_OVERHEAD_BYTES
    assert edge.body_limit("/api/v1/agent/conversations/conv_1/attachments") == 1000 + edge.MULTIPART_OVERHEAD_BYTES


# --- proxy headers ---------------------------------------------------------------------------------------


async def scope_seen(trusted: list[str], peer: str, headers: list[tuple[bytes, bytes]], kind: str = "http") -> Any:
    seen: dict[str, Any] = {}

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        seen.update(scope)

    from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

    app = ProxyHeadersMiddleware(inner, trusted_hosts=trusted)  # what edge.with_edge builds from TRUSTED_PROXIES
    await app(
        {"type": kind, "scheme": "http" if kind == "http" else "ws", "client": (peer, 5000), "headers": headers},
        None,
        None,
    )  # type: ignore[arg-type]
    return seen


FORWARDED = [(b"x-forwarded-for", b"203.0.113.7"), (b"x-forwarded-proto", b"https")]


async def test_proxy_headers_are_believed_only_from_trusted_proxies():
    untrusted = await scope_seen([], "198.51.100.1", FORWARDED)
    assert (untrusted["client"][0], untrusted["scheme"]) == ("198.51.100.1", "http")

    by_network = await scope_seen(["10.0.0.0/8"], "10.1.2.3", FORWARDED)
    assert (by_network["client"][0], by_network["scheme"]) == ("203.0.113.7", "https")

    outside = await scope_seen(["10.0.0.0/8"], "11.0.0.1", FORWARDED)
    assert (outside["client"][0], outside["scheme"]) == ("11.0.0.1", "http")

    socket = await scope_seen(["10.0.0.0/8"], "10.1.2.3", FORWARDED, kind="websocket")
    assert socket["scheme"] == "wss"


def test_with_edge_reads_trusted_proxies_from_settings(settings):
    settings.TRUSTED_PROXIES = ["10.0.0.0/8", "192.0.2.1"]
    app = edge.with_edge(lambda scope, receive, send: None)  # type: ignore[arg-type,return-value]
    assert "10.9.9.9" in app.trusted_hosts and "192.0.2.1" in app.trusted_hosts  # type: ignore[attr-defined]
    assert "192.0.2.2" not in app.trusted_hosts  # type: ignore[attr-defined]


def production_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return embedded_env(
        tmp_path,
        DEBUG="false",
        SECRET_KEY="edge-test-" + "k7#Qz" * 10,
        ALLOWED_HOSTS="127.0.0.1",
        **extra,
    )


@pytest.mark.parametrize(("trusted", "redirected"), [("", True), ("127.0.0.1/32", False)], ids=["anyone", "proxy"])
def test_production_redirects_to_https_unless_a_trusted_proxy_says_it_was_https(tmp_path, trusted, redirected):
    env = production_env(tmp_path, TRUSTED_PROXIES=trusted)
    with daphne_process(env, tmp_path / "daphne.log") as (base, _):
        plain = requests.get(f"{base}/api/v1/agent/me", allow_redirects=False, timeout=5)
        assert plain.status_code == 301 and plain.headers["Location"].startswith("https://")

        claimed = requests.get(
            f"{base}/api/v1/agent/me", headers={"X-Forwarded-Proto": "https"}, allow_redirects=False, timeout=5
        )
        if redirected:  # anyone may send the header: not believed
            assert claimed.status_code == 301
        else:  # from the configured proxy: believed, and HSTS is sent
            assert claimed.status_code == 401
            assert claimed.headers["Strict-Transport-Security"].startswith("max-age=31536000")
        # the load balancer's plain health checks are answered, not redirected
        assert requests.get(f"{base}/healthz", allow_redirects=False, timeout=5).status_code == 200


# --- the socket's Origin ---------------------------------------------------------------------------------


def ws_scope(origin: str, host: str = "app.example.com", scheme: str = "wss") -> dict[str, Any]:
    return {"type": "websocket", "scheme": scheme, "headers": [(b"host", host.encode()), (b"origin", origin.encode())]}


@pytest.mark.parametrize(
    ("origin", "host", "scheme", "allowed"),
    [
        ("https://app.example.com", "app.example.com", "wss", True),
        ("https://app.example.com:443", "app.example.com", "wss", True),
        ("http://app.example.com", "app.example.com", "wss", False),  # scheme differs
        ("https://app.example.com:8443", "app.example.com", "wss", False),  # port differs
        ("https://app.example.com", "app.example.com:8443", "wss", False),
        ("https://app.example.com:8443", "app.example.com:8443", "wss", True),
        ("http://app.example.com", "app.example.com", "ws", True),
        ("https://app.example.com", "app.example.com", "ws", False),
        ("https://evil.example", "app.example.com", "wss", False),
        ("https://evil.example", "evil.example", "wss", False),  # a host that is not ours
        ("null", "app.example.com", "wss", False),
        ("", "app.example.com", "wss", False),
        ("https://partner.example", "app.example.com", "wss", True),  # CSRF_TRUSTED_ORIGINS
        ("http://partner.example", "app.example.com", "wss", False),
    ],
)
def test_the_socket_origin_must_match_scheme_host_and_port(settings, origin, host, scheme, allowed):
    settings.ALLOWED_HOSTS = ["app.example.com"]
    settings.CSRF_TRUSTED_ORIGINS = ["https://partner.example"]
    assert edge.same_origin(ws_scope(origin, host, scheme)) is allowed


# --- the agent app's Content-Security-Policy -------------------------------------------------------------


@pytest.mark.django_db
def test_the_agent_app_sends_a_csp_without_unsafe_inline(client, make_agent):
    agent = make_agent()
    client.force_login(agent.user)
    for path in ["/app/", "/app/login", "/app/sw.js"]:
        response = client.get(path, follow=path == "/app/login")
        policy = response.headers["Content-Security-Policy"]
        directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
        assert directives["script-src"] == "'self'" and directives["style-src"] == "'self'", policy
        assert directives["frame-ancestors"] == "'none'" and "unsafe" not in policy


def test_the_agent_app_templates_have_no_inline_script_or_style():
    """Under that policy an inline script, style element or style attribute would not run."""
    import re

    templates = Path(__file__).resolve().parent.parent / "templates" / "app"
    for page in templates.glob("*.html"):
        html = page.read_text()
        assert not re.search(r"<script(?![^>]*\bsrc=)(?![^>]*application/json)", html), page.name
        assert not re.search(r"<style\b|\sstyle=|\son[a-z]+=", html), page.name


# --- a 500 in production -----------------------------------------------------------------------------------


def _boom(request: Any) -> Any:
    raise RuntimeError("DATABASE_URL=postgres://app:hunter2@db.internal/app")


urlpatterns = [url_path("boom", _boom)]
handler500 = "core.errors.json_server_error"


def test_a_500_with_debug_off_says_nothing_of_the_settings(client, settings):
    """DEBUG unset is off (tests/test_settings.py); off, a 500 is the API's error shape and nothing else."""
    settings.DEBUG = False
    settings.ROOT_URLCONF = __name__
    client.raise_request_exception = False
    response = client.get("/boom")
    assert response.status_code == 500
    assert response.json() == {"error": {"code": "server_error", "detail": "Internal error."}}
    assert b"hunter2" not in response.content and b"DATABASE" not in response.content
