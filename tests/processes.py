"""Start the real processes (Daphne, Celery) against the test database."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import requests
from django.conf import settings

from marketplace import signing

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def local_http_server(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """Serve `handler` on a free local port in a thread; yields the base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def service_env(**extra: str) -> dict[str, str]:
    """The environment of a production-like process pointed at the test database."""
    db = settings.DATABASES["default"]
    url = f"postgres://{db['USER']}@{db['HOST']}:{db['PORT'] or 5432}/{db['NAME']}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env.update(
        DATABASE_URL=url,
        REDIS_URL=settings.REDIS_URL,
        DJANGO_SETTINGS_MODULE="config.settings",
        # Development settings unless the caller asks for production (DEBUG unset means off).
        DEBUG="true",
        TASK_RUNNER="celery",
        PYTHONUNBUFFERED="1",
        CALLBACK_ALLOWED_NETWORKS="127.0.0.0/8",  # the tests' callback receivers are on loopback
    )
    env.update(extra)
    return env


@contextmanager
def running(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "wb") as out:
        process = subprocess.Popen(args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            yield process
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@contextmanager
def daphne_process(
    env: dict[str, str], log: Path, port: int | None = None
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A Daphne process (on `port`, or a free one); yields its base URL and the process, to kill it."""
    port = port or free_port()
    with running(
        [str(BIN / "daphne"), "-b", "127.0.0.1", "-p", str(port), "config.asgi:application"], env, log
    ) as proc:
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/healthz", proc, log)
        yield base, proc


@contextmanager
def daphne(env: dict[str, str], log: Path, port: int | None = None) -> Iterator[str]:
    with daphne_process(env, log, port) as (base, _):
        yield base


@contextmanager
def redis_server(workdir: Path, port: int | None = None) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A private Redis (no persistence, like a cache-only production Redis), to kill and restart at will."""
    import redis

    port = port or free_port()
    args = [
        "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
        "--dir", str(workdir),
    ]  # fmt: skip
    with running(args, os.environ.copy(), workdir / f"redis-{port}-{time.time_ns()}.log") as proc:
        url = f"redis://127.0.0.1:{port}/0"
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis.from_url(url, socket_connect_timeout=1).ping()
                break
            except redis.ConnectionError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)
        yield url, proc


@contextmanager
def celery_worker(
    env: dict[str, str], log: Path, concurrency: int = 4, queues: str = "celery,callbacks,payouts"
) -> Iterator[subprocess.Popen[bytes]]:
    """A worker as the Procfile runs it (threads pool)."""
    args = [
        str(BIN / "celery"), "-A", "config", "worker", "-Q", queues, "--pool=threads", "--loglevel=info",
        f"--concurrency={concurrency}", f"--hostname={queues.replace(',', '-')}-{free_port()}@%h",
    ]  # fmt: skip
    with running(args, env, log) as proc:
        deadline = time.monotonic() + 60
        while b"ready." not in log.read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"celery worker did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)
        yield proc


def wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited:\n{log.read_text()[-3000:]}")
        try:
            if requests.get(url, timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer in {timeout}s:\n{log.read_text()[-3000:]}")


@contextmanager
def celery_beat(env: dict[str, str], log: Path, workdir: Path) -> Iterator[subprocess.Popen[bytes]]:
    args = [
        str(BIN / "celery"), "-A", "config", "beat", "--loglevel=info",
        "--scheduler", "django_celery_beat.schedulers:DatabaseScheduler",
        f"--pidfile={workdir / 'beat.pid'}",
    ]  # fmt: skip
    with running(args, env, log) as proc:
        yield proc


class AgentClient:
    """A real WebSocket client for one agent device (the `websockets` library)."""

    def __init__(self, base_url: str, token: str) -> None:
        from websockets.sync.client import connect

        self._stack = ExitStack()
        url = base_url.replace("http", "ws", 1) + f"/ws/agent/?token={token}"
        self.ws = self._stack.enter_context(connect(url, open_timeout=10))
        self.seen: list[dict[str, Any]] = []
        self.hello = self.expect("hello")

    def send(self, **content: Any) -> None:
        self.ws.send(json.dumps(content))

    def expect(self, type_: str | tuple[str, ...], within: float = 10, **match: Any) -> dict[str, Any]:
        """The next message of this type (or of one of these types) whose fields match."""
        types = (type_,) if isinstance(type_, str) else type_
        deadline = time.monotonic() + within
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {type_!r} {match} within {within}s; saw {[m['type'] for m in self.seen]}")
            try:
                message = json.loads(self.ws.recv(timeout=remaining))
            except TimeoutError:
                continue
            self.seen.append(message)
            if message["type"] in types and all(message.get(k) == v for k, v in match.items()):
                return message

    def drop(self) -> None:
        """Lose the connection without a goodbye, like a phone going through a tunnel."""
        self.ws.socket.shutdown(socket.SHUT_RDWR)
        self.ws.socket.close()

    def close(self) -> None:
        self._stack.close()


class HttpBot:
    """An AI bot over real HTTP: signed requests to a running service; a non-2xx fails the test."""

    def __init__(self, base: str, integration: Any) -> None:
        self.base, self.integration = base, integration

    def post(self, path: str, payload: dict[str, Any]) -> requests.Response:
        body = json.dumps(payload).encode()
        headers = {
            "Content-Type": "application/json",
            "X-Bot-Id": self.integration.id,
            "X-Bot-Signature": signing.request_header(self.integration.secret, "POST", path, body),
        }
        response = requests.post(self.base + path, data=body, headers=headers, timeout=10)
        assert response.status_code in (200, 201), response.text
        return response

    def escalate(self, external_id: str, **fields: Any) -> dict[str, Any]:
        return self.post("/api/v1/escalations", {"external_id": external_id, **fields}).json()
