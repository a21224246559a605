"""Faults in the data and jobs half, with real processes (Daphne, Celery worker and beat) on
PostgreSQL and Redis: dropped database connections, a dispatch worker killed with SIGKILL,
and Stripe and the bot's callback endpoint failing or hanging.

After each fault the invariants of issue 6 are checked in the database: every conversation
assigned once (or still waiting), every offer resolved, every earning transferred exactly
once with a balanced ledger, every callback delivered in order per conversation.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import requests
from django.db import connection
from django.db.models import Count, Q
from rest_framework.authtoken.models import Token

from dispatch.models import AgentConnection, Assignment, Offer
from marketplace import signing
from marketplace.models import Agent, BotIntegration, CallbackAttempt, CallbackEvent, Conversation, Message
from payouts.models import Earning, Transfer

from ..conftest import CallbackReceiver, wait_for
from ..payouts import conftest as payouts_fixtures
from ..payouts.conftest import ledger_sums_to_zero, onboard
from ..processes import celery_beat, celery_worker, daphne, service_env

# The payouts tests' fixtures: the Stripe stand-in, the platform configured for it, `resolve`.
standin, stripe_on, resolve = payouts_fixtures.standin, payouts_fixtures.stripe_on, payouts_fixtures.resolve

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.django_db(transaction=True)]

# Sweepers on short periods so that recovery shows within seconds.
FAST_SWEEPS = {
    "OFFER_SWEEP_SECONDS": "1",
    "DISPATCH_SWEEP_SECONDS": "1",
    "DISPATCH_SWEEP_MIN_WAIT_SECONDS": "1",
    "PRESENCE_SWEEP_SECONDS": "1",
    "CALLBACK_SWEEP_SECONDS": "1",
    "CALLBACK_REKICK_SECONDS": "3",
    # A delivery whose worker lost its database connection before recording the outcome
    # holds a lease until this runs out; then the sweeper sends it again.
    "CALLBACK_TIMEOUT_SECONDS": "2",
    "CALLBACK_LEASE_SECONDS": "4",
    "TRANSFER_LEASE_SECONDS": "4",
    "CALLBACK_BACKOFF_BASE_SECONDS": "0.2",
    "CALLBACK_BACKOFF_MAX_SECONDS": "1",
    "PAYOUT_SWEEP_SECONDS": "1",
    "PAYOUT_REKICK_SECONDS": "3",
}


# --- the faults ----------------------------------------------------------------------------


def terminate_backends() -> int:
    """Kill every other session on the test database (never another database's)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        return int(cursor.fetchone()[0])


def own_backend_pid() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return int(cursor.fetchone()[0])


class Terminator(threading.Thread):
    """Drops every database connection of the service every `period` seconds until stopped
    (all but its own and the test's, which keeps checking the invariants)."""

    def __init__(self, period: float) -> None:
        super().__init__(daemon=True)
        self.period, self.stop, self.killed, self.rounds = period, threading.Event(), 0, 0
        self.spare = own_backend_pid()

    def __enter__(self) -> Terminator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.join()

    def run(self) -> None:
        import psycopg

        db = connection.settings_dict
        with psycopg.connect(host=db["HOST"], port=db["PORT"] or 5432, user=db["USER"], dbname=db["NAME"]) as conn:
            conn.autocommit = True
            while not self.stop.wait(self.period):
                row = conn.execute(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid() AND pid <> %s",
                    (self.spare,),
                ).fetchone()
                self.killed += int(row[0]) if row else 0
                self.rounds += 1


# --- the clients: a bot that retries, agents whose app reconnects ---------------------------


class RetryingBot:
    """The bot over real HTTP; retries a failed request as a bot should (the API is idempotent)."""

    def __init__(self, base: str, integration: BotIntegration) -> None:
        self.base, self.integration = base, integration
        self.failures: list[tuple[int | None, str]] = []  # every non-2xx answer or network error
        self.seconds: list[float] = []  # how long each request took
        self.lock = threading.Lock()

    def post(self, path: str, payload: dict[str, Any], tries: int = 5) -> dict[str, Any]:
        for _ in range(tries):
            body = json.dumps(payload).encode()
            headers = {
                "Content-Type": "application/json",
                "X-Bot-Id": self.integration.id,
                "X-Bot-Signature": signing.request_header(self.integration.secret, "POST", path, body),
            }
            started = time.monotonic()
            try:
                response = requests.post(self.base + path, data=body, headers=headers, timeout=15)
                self.seconds.append(time.monotonic() - started)
            except requests.RequestException as exc:
                with self.lock:
                    self.failures.append((None, type(exc).__name__))
            else:
                if response.status_code in (200, 201):
                    return dict(response.json())
                with self.lock:
                    self.failures.append((response.status_code, response.text[:300]))
            time.sleep(0.2)
        raise AssertionError(f"{path} failed {tries} times: {self.failures[-tries:]}")

    def escalate(self, external_id: str) -> dict[str, Any]:
        return self.post("/api/v1/escalations", {"external_id": external_id, "language": "en", "topic": "billing"})


class AutoAgent(threading.Thread):
    """An agent's app over a real WebSocket: goes online, accepts every offer, answers each
    conversation it gets and resolves it once the answer is stored; reconnects (resuming from `hello`) whenever the
    socket closes, and tries again what the server answered `unavailable`, as a person would."""

    def __init__(self, base: str, token: str, name: str) -> None:
        super().__init__(daemon=True, name=name)
        self.base, self.token = base, token
        self.stop = threading.Event()
        self.connects = 0
        self.errors: list[dict[str, Any]] = []
        self.offers: dict[str, str] = {}  # offer id -> conversation id, until answered
        self.working: set[str] = set()  # conversations assigned and not yet closed
        self.said: set[str] = set()  # conversations whose answer the server has stored

    def run(self) -> None:
        from websockets.sync.client import connect

        url = self.base.replace("http", "ws", 1) + f"/ws/agent/?token={self.token}"
        while not self.stop.is_set():
            try:
                with connect(url, open_timeout=5, close_timeout=1) as ws:
                    self.connects += 1
                    self._session(ws)
            except Exception:  # closed by the server, refused, timed out: the app tries again
                self.stop.wait(0.2)

    def _session(self, ws: Any) -> None:
        def send(**content: Any) -> None:
            ws.send(json.dumps(content))

        def catch_up() -> None:
            for offer_id in list(self.offers):
                send(type="offer.accept", offer_id=offer_id)
            for conversation_id in list(self.working):
                if conversation_id in self.said:  # the answer is stored: resolve
                    send(type="conversation.resolve", conversation_id=conversation_id, outcome="resolved")
                else:  # client_id makes the message idempotent when it is sent again
                    send(type="message.send", conversation_id=conversation_id, text="On it.", client_id=conversation_id)

        while not self.stop.is_set():
            try:
                message = json.loads(ws.recv(timeout=0.2))
            except TimeoutError:
                continue
            kind = message.get("type")
            if kind == "hello":
                if message["status"] != "online":
                    send(type="presence", status="online")
                offer = message["pending_offer"]
                self.offers = {offer["offer_id"]: offer["conversation_id"]} if offer else {}
                self.working = {c["id"] for c in message["active_conversations"]}
                self.said |= {
                    c["id"]
                    for c in message["active_conversations"]
                    if any(m["client_id"] == c["id"] for m in c["messages"])
                }
                catch_up()
            elif kind == "offer":
                self.offers[message["offer_id"]] = message["conversation_id"]
                send(type="offer.accept", offer_id=message["offer_id"])
            elif kind == "offer.revoked":
                self.offers.pop(message["offer_id"], None)
            elif kind == "conversation.assigned":
                conversation_id = message["conversation"]["id"]
                self.offers = {o: c for o, c in self.offers.items() if c != conversation_id}
                self.working.add(conversation_id)
                catch_up()
            elif kind == "message" and message["message"]["client_id"] in self.working:
                self.said.add(message["message"]["client_id"])
                catch_up()
            elif kind == "conversation.closed":
                self.working.discard(message["conversation_id"])
            elif kind == "error":
                self.errors.append(message)
                if message["code"] == "unavailable":
                    time.sleep(0.2)
                    catch_up()


@pytest.fixture
def agents_factory(make_agent: Any) -> Iterator[Any]:
    started: list[AutoAgent] = []

    def start(base: str, n: int, capacity: int = 2, prefix: str = "agent") -> list[AutoAgent]:
        for i in range(n):
            agent = make_agent(username=f"{prefix}{i}", online=False, capacity=capacity)
            auto = AutoAgent(base, Token.objects.create(user=agent.user).key, f"{prefix}{i}")
            auto.start()
            started.append(auto)
        wait_for(lambda: Agent.objects.filter(status=Agent.Status.ONLINE).count() == n, timeout=20)
        return started[-n:]

    yield start
    for auto in started:
        auto.stop.set()
    for auto in started:
        auto.join(timeout=5)


# --- the invariants --------------------------------------------------------------------------


def assert_assigned_once(conversation_ids: list[str]) -> None:
    """Each conversation was assigned exactly once and never twice at once; no offer is left open."""
    assert not Offer.objects.filter(state=Offer.State.PENDING).exists(), "an offer is still open"
    accepted = Counter(
        Offer.objects.filter(conversation_id__in=conversation_ids, state=Offer.State.ACCEPTED).values_list(
            "conversation_id", flat=True
        )
    )
    assert {c: accepted[c] for c in conversation_ids} == dict.fromkeys(conversation_ids, 1)
    assignments = Counter(
        Assignment.objects.filter(conversation_id__in=conversation_ids).values_list("conversation_id", flat=True)
    )
    assert {c: assignments[c] for c in conversation_ids} == dict.fromkeys(conversation_ids, 1)
    for conversation in Conversation.objects.filter(pk__in=conversation_ids):
        statuses = list(conversation.events.order_by("id").values_list("to_status", flat=True))
        assert statuses.count("assigned") == 1, (conversation.pk, statuses)
    # Capacity bookkeeping matches the assignments still open.
    for agent in Agent.objects.annotate(open=Count("assignments", filter=Q(assignments__ended_at__isnull=True))).values(
        "id", "active_count", "open", "capacity"
    ):
        assert agent["active_count"] == agent["open"] <= agent["capacity"], agent


def assert_callbacks_delivered_in_order(receiver: CallbackReceiver, conversation_ids: list[str]) -> None:
    """Every event was delivered, and the bot got each conversation's events in their order."""
    events = CallbackEvent.objects.filter(conversation_id__in=conversation_ids)
    states = Counter(events.values_list("state", flat=True))
    assert states == {"delivered": events.count()}, states
    first_ok: dict[str, int] = {}  # event id -> the position of its first 2xx delivery
    seen = [r.json for r in receiver.ok()]
    for position, payload in enumerate(seen):
        first_ok.setdefault(payload["id"], position)
    for conversation_id in conversation_ids:
        ordered = list(
            CallbackEvent.objects.filter(conversation_id=conversation_id).order_by("seq").values_list("id", flat=True)
        )
        positions = [first_ok.get(event_id) for event_id in ordered]
        assert None not in positions, f"{conversation_id}: an event never reached the bot"
        assert positions == sorted(positions), f"{conversation_id}: events reached the bot out of order"


def _log_tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


# --- 1. dropped PostgreSQL connections -------------------------------------------------------


def test_dropped_database_connections_lose_nothing_and_fail_no_request_twice(
    make_integration, callback_receiver, agents_factory, tmp_path
):
    env = service_env(OFFER_TIMEOUT_SECONDS="5", PRESENCE_GRACE_SECONDS="10", **FAST_SWEEPS)
    integration = make_integration(callback_url=callback_receiver.url)
    with ExitStack() as stack:
        worker = stack.enter_context(celery_worker(env, tmp_path / "worker.log", concurrency=4))
        beat = stack.enter_context(celery_beat(env, tmp_path / "beat.log", tmp_path))
        base = stack.enter_context(daphne(env, tmp_path / "daphne.log"))
        bot = RetryingBot(base, integration)
        agents = agents_factory(base, 3, capacity=2)

        # Warm up: every process holds pooled connections, then they are all dropped at once.
        warm = [bot.escalate(f"warm-{n}")["id"] for n in range(4)]
        wait_for(lambda: Conversation.objects.filter(pk__in=warm, status="resolved").count() == 4, timeout=20)
        killed = terminate_backends()
        assert killed >= 3, "the service held no connections to drop"

        # Nothing was in flight: every request after the drop must succeed the first time
        # (a pooled connection that died must not be handed out, nor make anyone wait).
        after = [bot.escalate(f"after-{n}")["id"] for n in range(6)]
        assert bot.failures == [], f"requests failed after the drop: {bot.failures}"
        assert max(bot.seconds) < 5, f"a request waited for a connection: {bot.seconds}"
        wait_for(lambda: Conversation.objects.filter(pk__in=after, status="resolved").count() == 6, timeout=30)

        # Then the connections are dropped again and again while the work goes on.
        with Terminator(period=1.0) as chaos:
            burst = []
            for n in range(10):
                burst.append(bot.escalate(f"burst-{n}")["id"])
                time.sleep(0.3)
            wait_for(lambda: chaos.rounds >= 4, timeout=10)
        ids = warm + after + burst
        wait_for(
            lambda: Conversation.objects.filter(pk__in=ids, status="resolved").count() == len(ids),
            timeout=40,
            interval=0.2,
        )
        wait_for(
            lambda: not CallbackEvent.objects.filter(conversation_id__in=ids).exclude(state="delivered").exists(),
            timeout=30,
            interval=0.2,
        )
        # The processes lived through it; each agent's socket too, with one connection row each.
        assert worker.poll() is None and beat.poll() is None
        assert [a.connects for a in agents] == [1, 1, 1], "a socket was closed by a database error"
        rows = Counter(AgentConnection.objects.values_list("agent__user__username", flat=True))
        assert rows == {a.name: 1 for a in agents}, f"connection rows left behind: {rows}"
        for agent in agents:
            agent.stop.set()

    assert chaos.killed > 0
    assert Conversation.objects.filter(integration=integration).count() == len(ids), "a retried escalation doubled"
    assert_assigned_once(ids)
    assert_callbacks_delivered_in_order(callback_receiver, ids)
    # Each agent message was stored once, however often the app sent it again.
    doubled = Message.objects.filter(role="agent").values("conversation_id").annotate(n=Count("id")).filter(n__gt=1)
    assert not doubled.exists()
    assert Message.objects.filter(role="agent", conversation_id__in=ids).count() == len(ids)
    # What failed failed cleanly: a 503 the bot retried, an `unavailable` the app retried.
    assert all(status == 503 and '"unavailable"' in body for status, body in bot.failures), bot.failures
    errors = [e["code"] for a in agents for e in a.errors]
    assert set(errors) <= {"unavailable", "offer_not_open", "not_assigned", "conversation_closed", "conflict"}, errors
    print(
        f"dropped {chaos.killed} connections in {chaos.rounds} rounds; bot retried {len(bot.failures)}; "
        f"agents retried {errors.count('unavailable')}"
    )


# --- 2. a worker killed (SIGKILL) with dispatch and callback jobs in flight -------------------


def unacked_tasks() -> int:
    """Tasks a worker took from the broker and never acknowledged (Kombu's Redis transport)."""
    import redis
    from django.conf import settings

    return int(redis.Redis.from_url(settings.REDIS_URL).hlen("unacked"))


def assert_one_open_offer_at_a_time(conversation_ids: list[str]) -> None:
    for conversation_id in conversation_ids:
        offers = list(Offer.objects.filter(conversation_id=conversation_id).order_by("created_at"))
        for earlier, later in zip(offers, offers[1:], strict=False):
            assert earlier.responded_at is not None and earlier.responded_at <= later.created_at, (
                f"{conversation_id}: two offers open at once"
            )


def test_workers_killed_mid_dispatch_and_mid_callback_are_recovered_by_the_sweepers(
    make_integration, callback_receiver, agents_factory, tmp_path
):
    env = service_env(OFFER_TIMEOUT_SECONDS="5", **FAST_SWEEPS)
    integration = make_integration(callback_url=callback_receiver.url)
    # The bot's endpoint hangs past our timeout at first: deliveries are in flight when the worker dies.
    callback_receiver.script = [("sleep", 3)] * 6
    queues = "celery,callbacks"  # dispatch jobs and callback deliveries, both in flight at the kill
    unacked_before = unacked_tasks()  # left by earlier tests' workers, if any
    with ExitStack() as stack:
        stack.enter_context(celery_beat(env, tmp_path / "beat.log", tmp_path))
        base = stack.enter_context(daphne(env, tmp_path / "daphne.log"))
        worker = stack.enter_context(celery_worker(env, tmp_path / "worker-1.log", 4, queues=queues))
        bot = RetryingBot(base, integration)
        agents_factory(base, 3, capacity=4)

        ids = [bot.escalate(f"kill-{n}")["id"] for n in range(12)]
        # As soon as offers are going out and a delivery is under way: SIGKILL.
        wait_for(lambda: Offer.objects.exists(), timeout=20, interval=0.01)
        wait_for(lambda: CallbackEvent.objects.filter(lease_until__isnull=False).exists(), timeout=20, interval=0.01)
        worker.kill()
        worker.wait(timeout=10)
        lost = unacked_tasks() - unacked_before
        waiting = Conversation.objects.filter(pk__in=ids, status__in=Conversation.WAITING).count()
        leased = CallbackEvent.objects.filter(state="pending", lease_until__isnull=False).count()
        assert lost > 0, "no task was in flight when the worker died"

        # A new worker; what the dead one held is never redelivered by the broker within the
        # test (Redis' visibility timeout is an hour): only the sweepers (beat) can recover it.
        stack.enter_context(celery_worker(env, tmp_path / "worker-2.log", 4, queues=queues))
        wait_for(
            lambda: Conversation.objects.filter(pk__in=ids, status="resolved").count() == len(ids),
            timeout=45,
            interval=0.2,
        )
        wait_for(
            lambda: not CallbackEvent.objects.filter(conversation_id__in=ids).exclude(state="delivered").exists(),
            timeout=30,
            interval=0.2,
        )

    assert Conversation.objects.filter(integration=integration).count() == len(ids)
    assert_assigned_once(ids)
    assert_one_open_offer_at_a_time(ids)
    assert_callbacks_delivered_in_order(callback_receiver, ids)
    assert "sweep_" in (tmp_path / "worker-2.log").read_text()
    print(f"at the kill: {lost} tasks unacknowledged, {waiting} conversations waiting, {leased} deliveries leased")


# --- 3. Stripe and the bot's callback endpoint fail and hang --------------------------------


def test_stripe_and_the_bots_endpoint_failing_and_hanging_pay_once_and_deliver_in_order(
    stripe_on,
    settings,
    make_agent,
    integration,
    callback_receiver,
    resolve,
    tmp_path,
):
    env = service_env(
        STRIPE_SECRET_KEY="sk_test_standin",
        STRIPE_API_BASE=stripe_on.base,
        STRIPE_WEBHOOK_SECRET=stripe_on.webhook_secret,
        STRIPE_TIMEOUT_SECONDS="1",
        STRIPE_MAX_NETWORK_RETRIES="1",
        TRANSFER_RETRY_BASE_SECONDS="0.5",
        TRANSFER_RETRY_MAX_SECONDS="2",
        **FAST_SWEEPS,
    )
    agents = [make_agent(username=f"paid{n}") for n in range(2)]
    for agent in agents:
        onboard(agent, stripe_on)
    integration.callback_url = callback_receiver.url  # the bot whose conversations `resolve` escalates
    integration.save()
    settings.TASK_RUNNER = "celery"  # from here on, jobs go to the real worker
    # Stripe: errors, and answers that hang past our timeout after the transfer was made
    # (the outcome is unknown to us); the lookups that settle those hang and fail too.
    stripe_on.faults["POST /v1/transfers"] = [500, ("hang", 3), 503, 500, ("hang", 3), 502, 500, ("hang", 3)]
    stripe_on.faults["GET /v1/transfers"] = [("hang", 3), 500]
    # The bot's endpoint: errors and hangs past our timeout, then it recovers.
    callback_receiver.script = [500, ("sleep", 3), 503, 500, ("sleep", 3), 502, 500, 500, ("sleep", 3), 503]

    with ExitStack() as stack:
        worker = stack.enter_context(celery_worker(env, tmp_path / "worker.log", 4, queues="celery,callbacks,payouts"))
        stack.enter_context(celery_beat(env, tmp_path / "beat.log", tmp_path))
        conversations = []
        for n in range(8):
            agent = agents[n % 2]  # the other one is offline, so the dispatcher offers it to this one
            Agent.objects.exclude(pk=agent.pk).update(status=Agent.Status.OFFLINE)
            conversations.append(resolve(agent).pk)
        earnings = list(Earning.objects.filter(conversation_id__in=conversations).values_list("pk", flat=True))
        assert len(earnings) == len(conversations)
        wait_for(
            lambda: Transfer.objects.filter(earning_id__in=earnings, state="paid").count() == len(earnings),
            timeout=45,
            interval=0.2,
        )
        wait_for(
            lambda: (
                not CallbackEvent.objects.filter(conversation_id__in=conversations).exclude(state="delivered").exists()
            ),
            timeout=30,
            interval=0.2,
        )
        assert worker.poll() is None

    # Every fault was met.
    assert not stripe_on.faults["POST /v1/transfers"] and not stripe_on.faults["GET /v1/transfers"]
    assert not callback_receiver.script
    # Exactly one transfer at Stripe per earning, whatever was retried, for the amount earned.
    at_stripe = Counter(t["metadata"]["earning_id"] for t in stripe_on.transfers.values())
    assert at_stripe == dict.fromkeys(earnings, 1)
    for transfer in Transfer.objects.filter(earning_id__in=earnings).select_related("earning"):
        assert transfer.state == "paid" and transfer.amount == transfer.earning.amount
        assert stripe_on.transfers[transfer.stripe_transfer_id]["amount"] == transfer.amount
    posts = [h for m, p, _, h in stripe_on.requests_seen if (m, p) == ("POST", "/v1/transfers")]
    assert len(posts) > len(earnings), "nothing was retried"
    ledger_sums_to_zero()
    # Every callback delivered, in order per conversation, after failed attempts.
    assert_callbacks_delivered_in_order(callback_receiver, conversations)
    failed_attempts = CallbackAttempt.objects.filter(ok=False).count()
    assert failed_attempts >= 10
    lookups = sum(1 for m, p, _, _ in stripe_on.requests_seen if (m, p) == ("GET", "/v1/transfers"))
    print(
        f"{len(earnings)} earnings: {len(posts)} transfer requests, {lookups} lookups, 1 transfer each; "
        f"{failed_attempts} failed callback attempts"
    )


def test_a_request_that_loses_its_database_connection_is_a_503_to_retry(bot, monkeypatch):
    from django.db import OperationalError

    from dispatch.services import escalations

    def lost(**kwargs: Any) -> None:
        raise OperationalError("terminating connection due to administrator command")

    monkeypatch.setattr(escalations, "conversation_escalate", lost)
    response = bot.escalate("lost-1")

    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    assert response.json()["error"]["code"] == "unavailable"
    assert not Conversation.objects.exists()
