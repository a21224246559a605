"""Shared fixtures: factories, a signing bot client, a real HTTP callback receiver.

Under CI=true the suite refuses to run without PostgreSQL and Redis (it exits
non-zero before the first test) and never skips the tests that need them.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest
from django.conf import settings
from django.core.cache import cache
from django.test import Client

from core import jobs
from dispatch.services import admission, escalations
from marketplace import services, signing
from marketplace.models import Agent, BotIntegration, Conversation

from .processes import local_http_server

IN_CI = os.environ.get("CI", "").lower() == "true"


def pytest_configure(config: pytest.Config) -> None:
    if not IN_CI:
        return
    problems = []
    if not settings.IS_POSTGRES:
        problems.append(
            f"DATABASE_URL must point at PostgreSQL under CI=true (engine: {settings.DATABASES['default']['ENGINE']})"
        )
    else:
        import psycopg

        db = settings.DATABASES["default"]
        try:
            psycopg.connect(
                host=db["HOST"], port=db["PORT"] or 5432, user=db["USER"], dbname="postgres", connect_timeout=5
            ).close()
        except Exception as exc:
            problems.append(f"PostgreSQL unreachable: {exc}")
    if not settings.REDIS_URL:
        problems.append("REDIS_URL must be set under CI=true")
    else:
        import redis

        try:
            redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=5).ping()
        except Exception as exc:
            problems.append(f"Redis unreachable: {exc}")
    if problems:
        pytest.exit("CI=true but the real services are missing:\n  " + "\n  ".join(problems), returncode=3)


@pytest.fixture(autouse=True)
def _services_for_marked_tests(request: pytest.FixtureRequest) -> None:
    """postgres/redis tests skip on a laptop without them, and fail in CI."""
    needs = []
    if request.node.get_closest_marker("postgres") and not settings.IS_POSTGRES:
        needs.append("PostgreSQL (set DATABASE_URL=postgres://...)")
    if request.node.get_closest_marker("redis") and not settings.REDIS_URL:
        needs.append("Redis (set REDIS_URL=redis://...)")
    if needs:
        (pytest.fail if IN_CI else pytest.skip)("needs " + " and ".join(needs))


@pytest.fixture(autouse=True)
def _isolated_runtime(settings: Any) -> Iterator[None]:
    """Background jobs run in this process; nothing leaks from one test to the next."""
    settings.TASK_RUNNER = "thread"
    # The callback receivers of the tests are on loopback (production allows public addresses only).
    settings.CALLBACK_ALLOWED_NETWORKS = ["127.0.0.0/8"]
    # Admission reads the queue on every escalation (no figure kept from an earlier test or moment).
    settings.ADMISSION_ESTIMATE_MAX_AGE_SECONDS = 0
    admission.forget()
    cache.clear()
    jobs.runner.clear()
    yield
    jobs.runner.clear()
    assert jobs.runner.wait_idle(timeout=30), "a background job is still running after the test"
    _close_connections_of_the_async_thread()


def _close_connections_of_the_async_thread() -> None:
    """An async test's ORM calls (sync_to_async, thread-sensitive, with no outer async_to_sync) run
    on asgiref's one executor thread, whose database connection outlives the test; a fault test that
    terminates the database's sessions would leave it dead for whichever async test comes next.
    Each test starts with a fresh one."""
    from asgiref.sync import SyncToAsync
    from django.db import connections

    SyncToAsync.single_thread_executor.submit(connections.close_all).result(timeout=30)
    from dispatch import consumers  # the agents' socket actions run on threads of their own

    consumers.close_action_connections()
    from dispatch import socket_db  # and the opening and closing of sockets, on threads of their own

    socket_db.close_connections()


@dataclass
class RecordedJobs:
    """Background jobs captured instead of run, so a test decides when each one runs."""

    calls: list[tuple[Any, tuple[Any, ...], float]] = field(default_factory=list)

    def names(self) -> list[str]:
        return [task.name.rsplit(".", 1)[-1] for task, _, _ in self.calls]

    def run(self, name: str | None = None) -> list[Any]:
        """Run (and forget) the recorded jobs, or those of one task; jobs they start are recorded too."""
        selected = [c for c in self.calls if name is None or c[0].name.endswith(f".{name}")]
        for call in selected:
            self.calls.remove(call)
        return [task.run(*args) for task, args, _ in selected]

    def clear(self) -> None:
        self.calls.clear()


@pytest.fixture
def recorded_jobs(monkeypatch: pytest.MonkeyPatch) -> RecordedJobs:
    recorded = RecordedJobs()
    monkeypatch.setattr(
        jobs, "enqueue", lambda task, *args, countdown=0: recorded.calls.append((task, args, countdown))
    )
    return recorded


@pytest.fixture
def lost_tasks(settings: Any) -> Iterator[None]:
    """Jobs go to a broker nobody consumes: every task sent is lost, as in a crash."""
    from config.celery import app

    def use_broker(url: str) -> None:
        # Celery keeps its producer pool bound to the first broker it used: drop it,
        # or later tests that send real tasks would keep sending them nowhere.
        app.conf.broker_url = url
        app._pool = None
        if "amqp" in app.__dict__:
            app.amqp._producer_pool = None

    previous = app.conf.broker_url
    settings.TASK_RUNNER = "celery"
    use_broker("memory://")
    yield
    use_broker(previous)
    settings.TASK_RUNNER = "thread"


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02) -> Any:
    """Poll until predicate() is truthy; fail with a clear message otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


@pytest.fixture
def make_integration(db: None) -> Callable[..., BotIntegration]:
    counter = iter(range(1, 10_000))

    def make(**kwargs: Any) -> BotIntegration:
        n = next(counter)
        defaults: dict[str, Any] = {"name": f"bot-{n}", "callback_url": "http://127.0.0.1:9/callbacks"}
        return BotIntegration.objects.create(**{**defaults, **kwargs})

    return make


@pytest.fixture
def integration(make_integration: Callable[..., BotIntegration]) -> BotIntegration:
    return make_integration()


@pytest.fixture
def escalate(integration: BotIntegration) -> Callable[..., Conversation]:
    """New conversations from the bot, through the service (external ids conv-1, conv-2, ...)."""
    counter = iter(range(1, 100_000))

    def make(**fields: Any) -> Conversation:
        fields.setdefault("external_id", f"conv-{next(counter)}")
        conversation, _ = escalations.conversation_escalate(
            integration=integration, data=services.EscalationInput(**fields)
        )
        return conversation

    return make


@pytest.fixture
def make_agent(db: None) -> Callable[..., Agent]:
    counter = iter(range(1, 10_000))

    def make(
        *,
        languages: tuple[str, ...] = ("en",),
        skills: tuple[str, ...] = ("billing",),
        capacity: int = 1,
        online: bool = True,
        username: str | None = None,
    ) -> Agent:
        agent = services.agent_upsert(
            data=services.AgentInput(
                username=username or f"agent{next(counter)}",
                password="test-pass-123",
                languages=list(languages),
                skills=list(skills),
                capacity=capacity,
            )
        )
        if online:  # given: an agent already online
            Agent.objects.filter(pk=agent.pk).update(status=Agent.Status.ONLINE)
            agent.refresh_from_db()
        return agent

    return make


class BotClient:
    """Sends requests the way an AI bot does: raw JSON body, signed."""

    def __init__(self, integration: BotIntegration, client: Client | None = None) -> None:
        self.integration = integration
        self.client = client or Client()

    def headers(
        self,
        method: str,
        path: str,
        body: bytes,
        *,
        secret: str | None = None,
        timestamp: int | None = None,
        with_v1: bool = False,
    ) -> dict[str, str]:
        signature = signing.request_header(
            secret or self.integration.secret, method, path, body, timestamp, with_v1=with_v1
        )
        return {"X-Bot-Id": self.integration.id, "X-Bot-Signature": signature}

    def post(self, path: str, data: Any = None, *, raw: bytes | None = None, **sign: Any) -> Any:
        body = raw if raw is not None else json.dumps(data if data is not None else {}).encode()
        return self.client.generic(
            "POST", path, body, content_type="application/json", headers=self.headers("POST", path, body, **sign)
        )

    def get(self, path: str, **sign: Any) -> Any:
        return self.client.get(path, headers=self.headers("GET", path, b"", **sign))

    def escalate(self, external_id: str = "conv-1", **fields: Any) -> Any:
        return self.post("/api/v1/escalations", {"external_id": external_id, **fields})


@pytest.fixture
def bot(integration: BotIntegration) -> BotClient:
    return BotClient(integration)


@dataclass
class ReceivedCallback:
    headers: dict[str, str]
    body: bytes
    path: str = ""  # the request target as it arrived (path and query)

    @property
    def json(self) -> dict[str, Any]:
        return json.loads(self.body)


@dataclass
class CallbackReceiver:
    """A real HTTP server standing in for a bot's callback endpoint.

    `script` is consumed one entry per request: an int status, or ("sleep", s)
    to hang past the client's timeout. When it runs out, `default` answers.
    """

    url: str = ""
    received: list[ReceivedCallback] = field(default_factory=list)
    script: list[Any] = field(default_factory=list)
    default: int = 200
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next_action(self) -> Any:
        with self.lock:
            return self.script.pop(0) if self.script else self.default

    def ok(self) -> list[ReceivedCallback]:
        return [r for r in self.received if r.headers.get("x-answered") == "2xx"]


@pytest.fixture
def callback_receiver() -> Iterator[CallbackReceiver]:
    receiver = CallbackReceiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            action = receiver.next_action()
            headers = {k.lower(): v for k, v in self.headers.items()}
            if isinstance(action, tuple) and action[0] == "sleep":
                time.sleep(action[1])  # past the client's timeout: it counts as failed
                headers["x-answered"] = "late"
                action = 200
            else:
                headers["x-answered"] = "2xx" if 200 <= action < 300 else str(action)
            with receiver.lock:
                receiver.received.append(ReceivedCallback(headers, body, self.path))
            try:
                self.send_response(action)
                self.end_headers()
            except OSError:  # the client gave up (timeout)
                pass

        def log_message(self, *args: Any) -> None:
            pass

    with local_http_server(Handler) as base:
        receiver.url = f"{base}/callbacks"
        yield receiver


@dataclass
class Clock:
    """Django's clock, moved forward by hand: `advance(45)` is 45 s passing for every timestamp
    the code takes (timezone.now() and the model fields that default to it), not for signatures."""

    offset: float = 0.0

    def advance(self, seconds: float) -> None:
        self.offset += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    from datetime import timedelta

    from django.apps import apps
    from django.utils import timezone

    real_now = timezone.now
    moved = Clock()

    def now() -> Any:
        return real_now() + timedelta(seconds=moved.offset)

    monkeypatch.setattr(timezone, "now", now)
    for model in apps.get_models():  # `default=timezone.now` holds the function itself (and caches it)
        for model_field in model._meta.concrete_fields:
            if getattr(model_field, "default", None) is real_now:
                monkeypatch.setattr(model_field, "default", now)
                monkeypatch.setattr(model_field, "_get_default", now)
    return moved
