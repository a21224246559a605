"""Statements and transactions per conversation life, counted in one process.

One bot escalation through the whole HTTP stack (Django's test client, signed), the
dispatch job, an agent's socket (Channels' communicator over the real consumer) that
accepts, sends one message and resolves, and the callbacks' deliveries and the
earning's release, all on PostgreSQL with the jobs run in this process. Every SQL
statement any thread sends is counted, by the step that caused it:

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres .venv/bin/python bench/statements.py [--lives 20]

It creates (and drops) its own database `bench_statements`. The capacity model in
docs/BENCHMARKS.md is built from these counts.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

_counts: collections.Counter[str] = collections.Counter()
_texts: collections.Counter[str] = collections.Counter()
_step = "setup"
_lock = threading.Lock()


def _count(sql: str) -> None:
    word = sql.lstrip().split(None, 1)[0].upper() if sql.strip() else "(empty)"
    with _lock:
        _counts[f"{_step}\t{word}"] += 1
        _texts[f"{_step}\t{' '.join(sql.split())[:150]}"] += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lives", type=int, default=20)
    parser.add_argument("--sql", action="store_true", help="also print each statement's text (its start)")
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT / "bench"))
    from dispatch_latency import prepare_database

    server = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
    os.environ["DATABASE_URL"] = prepare_database(server, "bench_statements")
    os.environ.pop("REDIS_URL", None)
    os.environ.update(
        DJANGO_SETTINGS_MODULE="config.settings_dev",
        TASK_RUNNER="thread",
        LOG_LEVEL="ERROR",
        CALLBACK_ALLOWED_NETWORKS="127.0.0.0/8",
        CALLBACK_MAX_ATTEMPTS="1",
        DB_POOL_CHECK="false",
        ALLOWED_HOSTS="testserver,127.0.0.1,localhost",
    )
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, check=True)
    import django

    django.setup()
    from django.db.backends import utils

    original_execute = utils.CursorWrapper._execute
    original_many = utils.CursorWrapper._executemany

    def execute(self: Any, sql: str, params: Any, *rest: Any) -> Any:
        _count(sql)
        return original_execute(self, sql, params, *rest)

    def executemany(self: Any, sql: str, params: Any, *rest: Any) -> Any:
        _count(sql)
        return original_many(self, sql, params, *rest)

    utils.CursorWrapper._execute = execute  # type: ignore[method-assign]
    utils.CursorWrapper._executemany = executemany  # type: ignore[method-assign]
    asyncio.run(_lives(args.lives))
    steps: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for key, n in _counts.items():
        step, word = key.split("\t")
        steps[step][word] += n
    print(f"SQL statements per conversation life (mean over {args.lives} lives), by step and kind:")
    total = 0.0
    for step, words in steps.items():
        if step == "setup":
            continue
        per = {word: n / args.lives for word, n in words.items()}
        total += sum(per.values())
        kinds = ", ".join(f"{word} {n:g}" for word, n in sorted(per.items(), key=lambda item: -item[1]))
        print(f"  {step:<34} {sum(per.values()):5.1f}   ({kinds})")
    print(f"  {'total':<34} {total:5.1f}")
    if args.sql:
        for key, n in sorted(_texts.items()):
            if not key.startswith("setup"):
                print(f"{n / args.lives:5.1f}  {key}")


async def _lives(lives: int) -> None:
    global _step
    from asgiref.sync import sync_to_async
    from channels.routing import URLRouter
    from channels.testing import WebsocketCommunicator
    from django.test import Client
    from rest_framework.authtoken.models import Token

    from config.routing import websocket_urlpatterns
    from core import jobs
    from dispatch.auth import AgentAuthMiddleware
    from marketplace import services, signing

    def setup() -> tuple[Any, str]:
        integration = services.integration_create(
            data=services.IntegrationInput(name="bench", callback_url="http://127.0.0.1:9/discard")
        )
        template = services.AgentInput("", "bench-pass-123", ["en"], ["billing"], 1)
        ((agent, _),) = services.agents_create_bulk(prefix="stm", count=1, template=template)
        return integration, Token.objects.get_or_create(user_id=agent.user_id)[0].key

    integration, token = await sync_to_async(setup)()
    application = AgentAuthMiddleware(URLRouter(websocket_urlpatterns))
    client = Client()

    async def expect(socket: WebsocketCommunicator, kind: str) -> dict[str, Any]:
        while True:
            message = json.loads(await socket.receive_from(timeout=10))
            if message.get("type") == kind:
                return message

    def idle() -> None:
        jobs.runner.wait_idle(10)

    def escalate(n: int) -> None:
        body = json.dumps({"external_id": f"life-{n}", "language": "en", "topic": "billing"}).encode()
        path = "/api/v1/escalations"
        answer = client.post(
            path,
            body,
            content_type="application/json",
            HTTP_X_BOT_ID=integration.id,
            HTTP_X_BOT_SIGNATURE=signing.request_header(integration.secret, "POST", path, body),
        )
        assert answer.status_code == 201, answer.content

    socket = WebsocketCommunicator(application, f"/ws/agent/?token={token}")
    connected, _ = await socket.connect(timeout=10)
    assert connected
    await expect(socket, "hello")
    await socket.send_to(text_data=json.dumps({"type": "presence", "status": "online"}))
    await expect(socket, "presence")
    await sync_to_async(idle)()
    for n in range(lives):
        _step = "1 bot POST escalation"
        await sync_to_async(escalate)(n)
        _step = "2 dispatch (job) + offer"
        offer = await expect(socket, "offer")
        await sync_to_async(idle)()
        _step = "3 agent accepts"
        await socket.send_to(text_data=json.dumps({"type": "offer.accept", "offer_id": offer["offer_id"]}))
        assigned = await expect(socket, "conversation.assigned")
        conversation_id = assigned["conversation"]["id"]
        _step = "4 agent sends a message"
        message = {"type": "message.send", "conversation_id": conversation_id, "text": "hi", "client_id": f"c{n}"}
        await socket.send_to(text_data=json.dumps(message))
        await expect(socket, "message")
        _step = "5 agent resolves"
        resolve = {"type": "conversation.resolve", "conversation_id": conversation_id, "outcome": "resolved"}
        await socket.send_to(text_data=json.dumps(resolve))
        await expect(socket, "conversation.closed")
        _step = "6 after commit: jobs (callbacks, payouts, timers)"
        await sync_to_async(idle)()
        await asyncio.sleep(0.05)
        await sync_to_async(idle)()
    await socket.disconnect()


if __name__ == "__main__":
    main()
