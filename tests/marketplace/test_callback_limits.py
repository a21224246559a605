"""One callback attempt is bounded: in time (a total deadline), in bytes read, in attempts, and in where
it may connect (issue 11, findings 2 and 6). Real HTTP servers on loopback; no other address is ever
contacted: refused addresses are refused before any connection."""

from __future__ import annotations

import socket
import threading
import time
import tracemalloc
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest
from django.utils import timezone

from dispatch.services import escalations
from marketplace import callbacks, services
from marketplace.models import BotIntegration, CallbackAttempt, CallbackEvent, Conversation

from ..processes import local_http_server

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def limits(settings: Any) -> Any:
    settings.CALLBACK_TIMEOUT_SECONDS = 1.5
    settings.CALLBACK_LEASE_SECONDS = 10
    settings.CALLBACK_MAX_ATTEMPTS = 3
    settings.CALLBACK_BACKOFF_BASE_SECONDS = 30  # one attempt per test: the retry is far away
    return settings


class Drip(BaseHTTPRequestHandler):
    """Answers one byte every 0.25 s, for up to a minute: never idle long enough for a per-read timeout."""

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        answer = b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"x" * 400 + b"\r\n\r\n"
        try:
            for byte in answer:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(0.25)
        except OSError:  # the client hung up at its deadline
            pass

    def log_message(self, *args: Any) -> None:
        pass


class Huge(BaseHTTPRequestHandler):
    """A 500 whose body says it is 200 MB, streamed for as long as the client reads."""

    size = 200 * 1024 * 1024
    sent = 0

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(500)
        self.send_header("Content-Length", str(self.size))
        self.end_headers()
        chunk = b"e" * 65536
        try:
            for _ in range(self.size // len(chunk)):
                self.wfile.write(chunk)
                type(self).sent += len(chunk)
        except OSError:
            pass

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def deliver_now(recorded_jobs: Any) -> Any:
    """Escalate for an integration and deliver its first event in this thread (jobs are not run by themselves)."""

    def run(integration: BotIntegration, external_id: str = "c-1") -> tuple[CallbackEvent, float]:
        conversation, _ = escalations.conversation_escalate(
            integration=integration, data=services.EscalationInput(external_id=external_id)
        )
        started = time.monotonic()
        callbacks.callbacks_deliver(conversation_id=conversation.pk)
        return CallbackEvent.objects.get(conversation=conversation, seq=1), time.monotonic() - started

    return run


def test_a_dripping_endpoint_is_cut_at_the_total_deadline(make_integration, limits, recorded_jobs):
    with local_http_server(Drip) as base:
        integration = make_integration(callback_url=f"{base}/cb")
        conversation, _ = escalations.conversation_escalate(
            integration=integration, data=services.EscalationInput(external_id="drip")
        )
        worker = threading.Thread(target=callbacks.callbacks_deliver, kwargs={"conversation_id": conversation.pk})
        started = time.monotonic()
        worker.start()
        worker.join(timeout=15)
        elapsed = time.monotonic() - started
        assert not worker.is_alive(), "the attempt is still reading the drip after 15 s"

    (attempt,) = CallbackAttempt.objects.filter(event__conversation=conversation)
    assert not attempt.ok and attempt.status_code is None
    assert "deadline" in attempt.error
    assert elapsed < limits.CALLBACK_TIMEOUT_SECONDS + 2
    assert attempt.duration_ms < (limits.CALLBACK_TIMEOUT_SECONDS + 1) * 1000


def test_a_huge_error_body_is_read_only_up_to_a_few_kib(make_integration, limits, deliver_now):
    Huge.sent = 0
    with local_http_server(Huge) as base:
        integration = make_integration(callback_url=f"{base}/cb")
        tracemalloc.start()
        try:
            event, _ = deliver_now(integration)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()

    (attempt,) = CallbackAttempt.objects.filter(event=event)
    assert (attempt.ok, attempt.status_code) == (False, 500)
    assert attempt.error.startswith("HTTP 500")
    assert len(attempt.error) < 1000
    print(f"peak Python allocation while delivering against a 200 MB body: {peak / 1024:.0f} KiB")
    assert peak < 2 * 1024 * 1024, f"{peak} bytes allocated: the body was read"
    assert Huge.sent < 50 * 1024 * 1024, "the connection was not closed after the cap"


def test_an_event_whose_last_attempt_never_reported_back_is_dead_not_tried_again(
    integration, callback_receiver, limits, recorded_jobs
):
    integration.callback_url = callback_receiver.url
    integration.save()
    conversation, _ = escalations.conversation_escalate(
        integration=integration, data=services.EscalationInput(external_id="lost-last")
    )
    # Given: the worker of the last allowed attempt died holding the lease.
    CallbackEvent.objects.update(attempts=limits.CALLBACK_MAX_ATTEMPTS, lease_until=timezone.now() - timedelta(1))

    callbacks.callbacks_sweep()
    recorded_jobs.run("deliver_callbacks")

    event = CallbackEvent.objects.get()
    assert (event.state, event.attempts) == ("dead", limits.CALLBACK_MAX_ATTEMPTS)
    assert "never reported back" in event.last_error
    assert callback_receiver.received == []


class Counting:
    """A TCP listener that only counts the connections made to it."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.accepted = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.sock.close()


@pytest.fixture
def counting() -> Iterator[Counting]:
    listener = Counting()
    yield listener
    listener.close()


def test_a_loopback_url_is_refused_at_delivery_when_loopback_is_not_allowed(
    make_integration, counting, limits, deliver_now
):
    limits.CALLBACK_ALLOWED_NETWORKS = []  # production's default: public addresses only
    # An integration stored before the check existed (or edited behind the service's back).
    integration = make_integration(callback_url=f"http://127.0.0.1:{counting.port}/admin/")

    event, _ = deliver_now(integration)

    assert counting.accepted == 0, "a connection was opened to a refused address"
    (attempt,) = CallbackAttempt.objects.filter(event=event)
    assert not attempt.ok and attempt.status_code is None
    assert "refused" in attempt.error and "127.0.0.1" in attempt.error
    assert event.state == "dead" and "CALLBACK_ALLOWED_NETWORKS" in event.last_error


def test_a_host_resolved_to_a_mix_of_allowed_and_refused_addresses_is_refused(
    make_integration, counting, limits, deliver_now, monkeypatch
):
    real = socket.getaddrinfo

    def rebinding(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "bot.rebind.test":  # the attacker's DNS answers a loopback and a link-local address
            return real("127.0.0.1", *args, **kwargs) + real("169.254.169.254", *args, **kwargs)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    integration = make_integration(callback_url=f"http://bot.rebind.test:{counting.port}/cb")

    event, _ = deliver_now(integration)

    assert counting.accepted == 0
    assert event.state == "dead" and "169.254.169.254" in event.last_error


def test_a_callback_url_with_a_non_ascii_path_is_delivered_percent_encoded(
    make_integration, callback_receiver, limits, deliver_now
):
    integration = make_integration(callback_url=f"{callback_receiver.url}/ärende?fall=ö&ok=1")

    event, _ = deliver_now(integration)

    assert event.state == "delivered"
    (request,) = callback_receiver.received
    assert request.path == "/callbacks/%C3%A4rende?fall=%C3%B6&ok=1"


def test_the_connection_goes_to_the_address_checked_with_the_original_host(
    make_integration, callback_receiver, limits, deliver_now, monkeypatch
):
    real = socket.getaddrinfo
    answers: list[str] = []

    def rebinding(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "bot.rebind.test":  # checked once as loopback; any later lookup would say link-local
            answers.append(host)
            return real("127.0.0.1" if len(answers) == 1 else "169.254.169.254", *args, **kwargs)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    port = callback_receiver.url.split(":")[2].split("/")[0]
    integration = make_integration(callback_url=f"http://bot.rebind.test:{port}/callbacks")

    event, _ = deliver_now(integration)

    assert event.state == "delivered"
    assert len(answers) == 1, "resolved once, connected to the address checked"
    (request,) = callback_receiver.received
    assert request.headers["host"] == f"bot.rebind.test:{port}"


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8000/admin/",
        "http://localhost/",
        "http://10.0.0.5/cb",
        "http://192.168.1.1/cb",
        "http://172.16.0.1/cb",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/cb",
        "http://[::ffff:127.0.0.1]/cb",
        "http://[fe80::1]/cb",
        "http://0.0.0.0/cb",
        "http://100.64.0.1/cb",
        # IPv4 wrapped in IPv6: NAT64 (well-known and local-use prefixes), 6to4, IPv4-compatible.
        "http://[64:ff9b::7f00:1]/cb",
        "http://[64:ff9b::a9fe:a9fe]/latest/meta-data/",
        "http://[64:ff9b:1::a00:1]/cb",
        "http://[2002:7f00:1::1]/cb",
        "http://[2002:a00:1::1]/cb",
        "http://[::7f00:1]/cb",
        "http://[::a00:5]/cb",
    ],
)
def test_internal_urls_are_refused_when_the_integration_is_created(url, settings):
    from django.core.exceptions import ValidationError

    settings.CALLBACK_ALLOWED_NETWORKS = []
    with pytest.raises(ValidationError) as refused:
        services.integration_create(data=services.IntegrationInput(name="x", callback_url=url))
    assert "callback_url" in refused.value.message_dict
    assert not BotIntegration.objects.exists()


def test_a_public_address_is_accepted_and_allowed_networks_widen_the_set(settings):
    settings.CALLBACK_ALLOWED_NETWORKS = []
    # Never contacted: creation only resolves and checks.
    services.integration_create(data=services.IntegrationInput(name="pub", callback_url="https://93.184.215.14/h"))
    # A public IPv4 address reached through NAT64 is public too.
    services.integration_create(
        data=services.IntegrationInput(name="pub-nat64", callback_url="https://[64:ff9b::5db8:d70e]/h")
    )
    settings.CALLBACK_ALLOWED_NETWORKS = ["10.0.0.0/8"]
    services.integration_create(data=services.IntegrationInput(name="in-cluster", callback_url="http://10.1.2.3/h"))
    assert BotIntegration.objects.count() == 3


def test_editing_to_an_internal_url_is_refused(integration, settings):
    from django.core.exceptions import ValidationError

    settings.CALLBACK_ALLOWED_NETWORKS = []
    with pytest.raises(ValidationError):
        services.integration_set_callback_url(integration_id=integration.pk, url="http://169.254.169.254/")
    integration.refresh_from_db()
    assert integration.callback_url != "http://169.254.169.254/"


def test_a_delivery_over_the_limit_waits_without_spending_an_attempt(make_integration, limits, recorded_jobs):
    limits.CALLBACK_MAX_IN_FLIGHT_PER_INTEGRATION = 2
    integration = make_integration()
    conversations = [
        escalations.conversation_escalate(integration=integration, data=services.EscalationInput(external_id=f"b{n}"))[
            0
        ]
        for n in range(3)
    ]
    # Two deliveries of this bot are in flight (claimed, not yet answered).
    first = callbacks._claim_head(conversations[0].pk)
    second = callbacks._claim_head(conversations[1].pk)
    assert isinstance(first, CallbackEvent) and isinstance(second, CallbackEvent)
    recorded_jobs.clear()

    assert callbacks.callbacks_deliver(conversation_id=conversations[2].pk) == 0

    third = CallbackEvent.objects.get(conversation=conversations[2])
    assert (third.attempts, third.lease_until, third.state) == (0, None, "pending")
    assert not CallbackAttempt.objects.exists()
    (countdown,) = [c for task, args, c in recorded_jobs.calls if args == (conversations[2].pk,)]
    assert 0 < countdown <= 2 * limits.CALLBACK_BULKHEAD_WAIT_SECONDS
    assert Conversation.objects.count() == 3


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CALLBACK_TIMEOUT_SECONDS": "10", "CALLBACK_LEASE_SECONDS": "11"}, "CALLBACK_LEASE_SECONDS"),
        ({"CALLBACK_ALLOWED_NETWORKS": "127.0.0.0/8,not-a-network"}, "CALLBACK_ALLOWED_NETWORKS"),
        ({"CALLBACK_MAX_IN_FLIGHT_PER_INTEGRATION": "0"}, "CALLBACK_MAX_IN_FLIGHT_PER_INTEGRATION"),
    ],
)
def test_settings_refuse_a_lease_shorter_than_the_deadline_and_bad_networks(env, message):
    from ..test_settings import load_settings

    result = load_settings(DEBUG="true", **env)
    assert result.returncode != 0 and "ImproperlyConfigured" in result.stderr and message in result.stderr


def test_default_lease_outlasts_the_default_deadline():
    from ..test_settings import load_settings

    assert load_settings(DEBUG="true").returncode == 0
    result = load_settings(DEBUG="true", CALLBACK_TIMEOUT_SECONDS="60")  # the lease follows the deadline when not set
    assert result.returncode == 0, result.stderr


@pytest.fixture
def tls_receiver(tmp_path: Any) -> Iterator[tuple[str, Any, list[str]]]:
    """An https endpoint on loopback whose certificate names `localhost`; yields its port, the CA, and the SNI seen."""
    import ssl

    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("localhost")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    names: list[str] = []
    context.sni_callback = lambda sock, name, ctx: names.append(name)  # type: ignore[assignment,func-returns-value]

    class Ok(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    from http.server import ThreadingHTTPServer

    server = ThreadingHTTPServer(("127.0.0.1", 0), Ok)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    try:
        yield str(server.server_address[1]), str(bundle), names
    finally:
        server.shutdown()
        server.server_close()


def test_https_checks_the_certificate_and_sends_sni_for_the_hostname(
    make_integration, tls_receiver, limits, deliver_now
):
    port, bundle, names = tls_receiver
    limits.CALLBACK_CA_BUNDLE = bundle

    good, _ = deliver_now(make_integration(callback_url=f"https://localhost:{port}/cb"), "tls-ok")
    # The same server by its address: the certificate does not name 127.0.0.1, so the attempt fails.
    bad, _ = deliver_now(make_integration(callback_url=f"https://127.0.0.1:{port}/cb"), "tls-bad")

    assert good.state == "delivered"
    assert names[0] == "localhost"
    assert bad.state == "pending" and "CERTIFICATE_VERIFY_FAILED" in bad.last_error


def test_a_hung_dns_lookup_ends_at_the_deadline_and_is_tried_again(make_integration, limits, deliver_now, monkeypatch):
    real = socket.getaddrinfo

    def hanging(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "bot.hang.test":  # a resolver that does not answer
            time.sleep(5)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", hanging)
    integration = make_integration(callback_url="http://bot.hang.test/cb")

    event, elapsed = deliver_now(integration)

    assert elapsed < limits.CALLBACK_TIMEOUT_SECONDS + 1.5
    assert event.state == "pending" and "did not resolve within" in event.last_error  # a retry, not a refusal
