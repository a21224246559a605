"""One bot whose endpoint drips its answer a byte at a time, with 40 conversations, must not stall
another bot's callbacks nor a transfer (issue 11, finding 2).

Run twice: in the embedded thread runner, and with real Celery worker processes laid out as the
Procfile lays them out (read from the Procfile itself). Everything is real and on loopback: the
dripping endpoint, the healthy bot's receiver, the Stripe stand-in.
"""

from __future__ import annotations

import re
import select
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from django.db.models import Max
from django.utils import timezone

from dispatch.services import escalations
from marketplace import services
from marketplace.models import BotIntegration, CallbackEvent
from payouts.models import Transfer

from ..conftest import CallbackReceiver, wait_for
from ..payouts import conftest as payouts_fixtures
from ..payouts.conftest import onboard
from ..processes import ROOT, celery_worker, local_http_server, service_env

# The payouts tests' fixtures: the Stripe stand-in, the platform configured for it, `resolve`.
standin, stripe_on, resolve = payouts_fixtures.standin, payouts_fixtures.stripe_on, payouts_fixtures.resolve

CONVERSATIONS = 40


class DripServer:
    """Answers a byte every 0.5 s for up to a minute; counts the deliveries open at once."""

    def __init__(self) -> None:
        self.open = 0
        self.most_open = 0
        self.requests = 0
        self.lock = threading.Lock()

    def handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with server.lock:
                    server.requests += 1
                    server.open += 1
                    server.most_open = max(server.most_open, server.open)
                try:
                    for byte in b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"x" * 120:
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                        # Wait 0.5 s, but notice at once when the platform hangs up (at its deadline),
                        # so that `open` counts the deliveries the platform really holds.
                        readable, _, _ = select.select([self.connection], [], [], 0.5)
                        if readable and not self.connection.recv(1, socket.MSG_PEEK):
                            break
                except OSError:  # the platform hung up at its deadline
                    pass
                finally:
                    with server.lock:
                        server.open -= 1

            def log_message(self, *args: Any) -> None:
                pass

        return Handler


@contextmanager
def dripping_bot(make_integration: Any) -> Iterator[tuple[BotIntegration, DripServer]]:
    drip = DripServer()
    with local_http_server(drip.handler()) as base:
        yield make_integration(name="dripping", callback_url=f"{base}/cb"), drip


def escalate_many(integration: BotIntegration, count: int) -> None:
    for n in range(count):
        escalations.conversation_escalate(
            integration=integration, data=services.EscalationInput(external_id=f"d{n}", language="fi")
        )


def in_flight(integration: BotIntegration) -> int:
    return CallbackEvent.objects.filter(
        integration=integration, state="pending", lease_until__gt=timezone.now()
    ).count()


def healthy_callback_seconds(healthy: BotIntegration, receiver: CallbackReceiver, external_id: str) -> float:
    """Escalate for the healthy bot; seconds until its `conversation.queued` reaches its endpoint."""
    before = len(receiver.ok())
    started = time.monotonic()
    # In a language the test's agent does not speak: it stays free for the conversation `resolve` makes.
    escalations.conversation_escalate(
        integration=healthy, data=services.EscalationInput(external_id=external_id, language="fi")
    )
    wait_for(lambda: len(receiver.ok()) > before, timeout=30, interval=0.01)
    return time.monotonic() - started


def check_slow_bot_isolated(
    *, healthy: BotIntegration, receiver: CallbackReceiver, drip_bot: BotIntegration, drip: DripServer, resolve: Any,
    agent: Any, limit: int,
) -> dict[str, float]:  # fmt: skip
    escalate_many(drip_bot, CONVERSATIONS)
    # The dripping bot holds its share of the workers, and no more.
    wait_for(lambda: drip.open >= limit, timeout=30)
    samples = []
    figures: dict[str, float] = {}
    for n in range(3):
        figures[f"healthy_callback_{n}_s"] = healthy_callback_seconds(healthy, receiver, f"h{n}")
        samples.append(in_flight(drip_bot))
    # A transfer: the agent resolves a conversation (of the healthy bot); Stripe (the stand-in) pays it.
    conversation = resolve(agent)
    resolved = time.monotonic()
    wait_for(lambda: Transfer.objects.filter(earning__conversation=conversation, state="paid").exists(), timeout=30)
    figures["transfer_s"] = time.monotonic() - resolved
    samples.append(in_flight(drip_bot))
    # The first deliveries hit their deadline; the next ones of the dripping bot take their places
    # (never beside them: the lease outlasts the deadline), and the healthy bot is still served at once.
    wait_for(lambda: drip.requests >= 2 * limit, timeout=30)
    figures["healthy_callback_after_deadline_s"] = healthy_callback_seconds(healthy, receiver, "h-late")
    samples.append(in_flight(drip_bot))

    assert drip.open >= 1, "the dripping bot is still being delivered to (the test measured under load)"
    assert max(samples) <= limit and drip.most_open <= limit, (samples, drip.most_open)
    worst = max(v for k, v in figures.items() if k.startswith("healthy"))
    assert worst < 2, figures
    assert figures["transfer_s"] < 10, figures
    attempts = CallbackEvent.objects.aggregate(m=Max("attempts"))["m"]
    assert attempts <= CallbackEvent.objects.aggregate(m=Max("max_attempts"))["m"]
    print("figures:", {k: round(v, 3) for k, v in figures.items()}, "drip requests:", drip.requests)
    return figures


@pytest.fixture
def slow_bot_settings(settings: Any) -> Any:
    settings.CALLBACK_TIMEOUT_SECONDS = 5
    settings.CALLBACK_LEASE_SECONDS = 15
    settings.CALLBACK_BACKOFF_BASE_SECONDS = 30  # one attempt per event within the test
    # Many conversations queue behind one agent to make many callbacks: past the admission SLA, which
    # is not what these tests are about (tests/dispatch/test_admission.py is).
    settings.ADMISSION_CONTROL = False
    return settings


@pytest.mark.django_db(transaction=True)
def test_a_dripping_bot_delays_neither_another_bots_callbacks_nor_a_transfer_embedded(
    stripe_on, slow_bot_settings, integration, callback_receiver, make_integration, make_agent, resolve
):
    integration.callback_url = callback_receiver.url  # the healthy bot
    integration.save()
    agent = make_agent()
    onboard(agent, stripe_on)
    with dripping_bot(make_integration) as (drip_bot, drip):
        check_slow_bot_isolated(
            healthy=integration, receiver=callback_receiver, drip_bot=drip_bot, drip=drip, resolve=resolve,
            agent=agent, limit=slow_bot_settings.CALLBACK_MAX_IN_FLIGHT_PER_INTEGRATION,
        )  # fmt: skip


def procfile_workers() -> list[tuple[str, str, int]]:
    """(name, queues, concurrency) of every Celery worker line in the Procfile, with its default concurrency."""
    workers = []
    for line in (ROOT / "Procfile").read_text().splitlines():
        name, _, command = line.partition(":")
        if "celery" in command and " worker " in command:
            queues = re.search(r"-Q\s+(\S+)", command)
            concurrency = re.search(r"--concurrency=\$\{\w+:-(\d+)\}", command)
            assert queues and concurrency, line
            workers.append((name.strip(), queues.group(1), int(concurrency.group(1))))
    return workers


def test_the_procfile_gives_payouts_a_worker_of_their_own():
    by_queue = {queue: name for name, queues, _ in procfile_workers() for queue in queues.split(",")}
    assert by_queue["payouts"] != by_queue["callbacks"] and by_queue["payouts"] != by_queue["celery"]


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_a_dripping_bot_delays_neither_another_bots_callbacks_nor_a_transfer_with_the_procfiles_workers(
    stripe_on, slow_bot_settings, integration, callback_receiver, make_integration, make_agent, resolve,
    tmp_path: Path,
):  # fmt: skip
    integration.callback_url = callback_receiver.url
    integration.save()
    agent = make_agent()
    onboard(agent, stripe_on)
    env = service_env(
        STRIPE_SECRET_KEY="sk_test_standin",
        STRIPE_API_BASE=stripe_on.base,
        STRIPE_WEBHOOK_SECRET=stripe_on.webhook_secret,
        STRIPE_TIMEOUT_SECONDS="5",
        CALLBACK_TIMEOUT_SECONDS="5",
        CALLBACK_LEASE_SECONDS="15",
        CALLBACK_BACKOFF_BASE_SECONDS="30",
    )
    with ExitStack() as stack:
        for name, queues, concurrency in procfile_workers():
            stack.enter_context(celery_worker(env, tmp_path / f"{name}.log", concurrency, queues=queues))
        slow_bot_settings.TASK_RUNNER = "celery"  # from here on, jobs go to the real workers
        drip_bot, drip = stack.enter_context(dripping_bot(make_integration))
        check_slow_bot_isolated(
            healthy=integration, receiver=callback_receiver, drip_bot=drip_bot, drip=drip, resolve=resolve,
            agent=agent, limit=slow_bot_settings.CALLBACK_MAX_IN_FLIGHT_PER_INTEGRATION,
        )  # fmt: skip
