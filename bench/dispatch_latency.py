"""Dispatch latency, end to end, with real processes.

N agents (default 1,000) connect over WebSockets, split across two Daphne
processes; Celery workers and beat run beside them, on PostgreSQL and Redis.
A bot posts signed escalations at R per second (default 20). Every agent
accepts each offer at once and resolves the conversation after a short random
time. Printed: p50/p99/max of

  escalation -> offer      from sending the bot's POST to the agent receiving `offer`
  accept -> assigned       from sending `offer.accept` to receiving `conversation.assigned`

and, measured in the same run, the floor: one database transaction plus one
channel-layer round trip through Redis (what any design must pay at least).

The load generators run in their own processes (one per Daphne process for the
agents, one for the bot) so that their own CPU use does not queue behind the
measurement; all timestamps are CLOCK_MONOTONIC, shared by every process.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres REDIS_URL=redis://127.0.0.1:6379/13 \\
        .venv/bin/python bench/dispatch_latency.py --agents 1000 --rate 20 --duration 30

It creates (and drops) its own database `bench_dispatch` on that server and
flushes the Redis database it is given. Logs of the servers go to var/bench/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def summary(name: str, values_ms: list[float]) -> str:
    if not values_ms:
        return f"{name:<24} no samples"
    return (
        f"{name:<24} n={len(values_ms):<6} p50={percentile(values_ms, 50):7.1f} ms  "
        f"p99={percentile(values_ms, 99):7.1f} ms  max={max(values_ms):7.1f} ms"
    )


# --- role: agents (a process per Daphne) ---------------------------------------------


async def agents_role(
    base: str, tokens: list[str], handle_time: Callable[[], float], *, from_offer: bool = False, chat: bool = False
) -> None:
    """Agents that accept every offer at once, optionally send one message, and resolve after
    `handle_time()` seconds, counted from `conversation.assigned` (or, with `from_offer`, from the
    offer's arrival: the agent's whole occupancy, as a workforce tool measures handle time)."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidHandshake, InvalidMessage

    out = sys.stdout
    online = 0

    def emit(**event: object) -> None:
        out.write(json.dumps(event) + "\n")

    async def opened(url: str) -> Any:
        """Connect as the app does: a refused or dropped handshake is tried again with backoff."""
        for attempt in range(6):
            try:
                return await connect(url, open_timeout=120, max_queue=None, ping_interval=None)
            except (OSError, InvalidHandshake, InvalidMessage):
                if attempt == 5:
                    raise
                await asyncio.sleep(0.5 * 2**attempt + random.random())

    async def agent(token: str, connected: asyncio.Event) -> None:
        nonlocal online
        url = base.replace("http", "ws", 1) + f"/ws/agent/?token={token}"
        async with await opened(url) as ws:
            await ws.recv()  # hello
            connected.set()
            await ws.send(json.dumps({"type": "presence", "status": "online"}))
            accepted: dict[str, float] = {}
            offered: dict[str, float] = {}

            async def keepalive() -> None:  # as the app does: the server closes silent sockets
                while True:
                    await asyncio.sleep(20)
                    await ws.send(json.dumps({"type": "ping"}))

            pinger = asyncio.create_task(keepalive())
            try:
                async for raw in ws:
                    now = time.monotonic()
                    message = json.loads(raw)
                    kind = message["type"]
                    if kind == "presence" and message.get("status") == "online":
                        online += 1
                        if online == len(tokens):
                            emit(kind="ready", t=now)
                            out.flush()
                    elif kind == "offer":
                        emit(kind="offer", t=now, conversation_id=message["conversation_id"])
                        offered[message["conversation_id"]] = now
                        accepted[message["conversation_id"]] = time.monotonic()
                        await ws.send(json.dumps({"type": "offer.accept", "offer_id": message["offer_id"]}))
                    elif kind == "conversation.assigned":
                        conversation_id = message["conversation"]["id"]
                        started = accepted.pop(conversation_id, None)
                        if started is not None:
                            emit(kind="assigned", t=now, accept_sent=started, conversation_id=conversation_id)
                        handle = handle_time()
                        due = (offered.pop(conversation_id, now) if from_offer else now) + handle

                        async def resolve(cid: str = conversation_id, due: float = due, handle: float = handle) -> None:
                            if chat:
                                hi = {"type": "message.send", "conversation_id": cid, "text": "Hi, I can help."}
                                await ws.send(json.dumps({**hi, "client_id": cid}))
                            await asyncio.sleep(max(0.0, due - time.monotonic()))
                            payload = {"type": "conversation.resolve", "conversation_id": cid, "outcome": "resolved"}
                            await ws.send(json.dumps(payload))
                            emit(kind="resolve", t=time.monotonic(), conversation_id=cid, handle=handle)

                        asyncio.create_task(resolve())
                    elif kind == "error":
                        emit(kind="error", t=now, code=message.get("code"))
            finally:
                pinger.cancel()
                emit(kind="closed", t=time.monotonic(), code=ws.close_code)

    semaphore = asyncio.Semaphore(25)  # handshakes in flight: Daphne rejects one not accepted within 5 s

    async def start(token: str) -> None:
        connected = asyncio.Event()
        async with semaphore:
            task = asyncio.create_task(agent(token, connected))
            await asyncio.wait([task, asyncio.create_task(connected.wait())], return_when=asyncio.FIRST_COMPLETED)
        try:
            await task
        except Exception as exc:  # say so at once: the coordinator is waiting for everyone to be online
            emit(kind="failed", error=repr(exc)[:200])
            out.flush()
            raise

    results = await asyncio.gather(*(start(t) for t in tokens), return_exceptions=True)
    failures: dict[str, int] = {}
    for result in results:
        if isinstance(result, BaseException):
            failures[repr(result)[:120]] = failures.get(repr(result)[:120], 0) + 1
    emit(kind="ended", failures=failures)


# --- role: bot -------------------------------------------------------------------------


def bot_role(
    bases: list[str],
    integration_id: str,
    secret: str,
    rate: float,
    seconds: float,
    *,
    poisson: bool = False,
    burst: int = 0,
    seed: int | None = None,
) -> None:
    """Escalations at `rate` a second for `seconds`: evenly spaced, or a Poisson process
    (exponential gaps); `burst` escalations go first, all at once (a queue to start from).

    Open loop: each POST is sent on time from a thread pool whether or not earlier ones were
    answered, so a slow server shows up as latency, not as a lower rate asked for."""
    import requests

    from marketplace import signing

    rng = random.Random(seed)
    local = threading.local()

    def post(n: int, scheduled: float, **extra: object) -> None:
        if not hasattr(local, "session"):
            local.session = requests.Session()
        send_escalation(local.session, bases[n % len(bases)], integration_id, secret, n, signing, scheduled, **extra)

    with ThreadPoolExecutor(max_workers=max(16, int(rate))) as pool:
        for n in range(1, burst + 1):
            pool.submit(post, n, time.monotonic(), burst=True)
        n = burst
        next_at = time.monotonic()
        end = next_at + seconds
        while next_at < end:
            n += 1
            pool.submit(post, n, next_at)
            next_at += rng.expovariate(rate) if poisson else 1 / rate
            time.sleep(max(0.0, next_at - time.monotonic()))
    cpu = os.times()
    print(json.dumps({"kind": "cpu", "cpu": cpu.user + cpu.system}), flush=True)


def send_escalation(
    session: Any, base: str, integration_id: str, secret: str, n: int, signing: Any, scheduled: float, **extra: object
) -> None:
    """One signed escalation; prints when it was due, sent and answered (CLOCK_MONOTONIC), the status and its id."""
    import requests

    body = json.dumps({"external_id": f"bench-{n}", "language": "en", "topic": "billing"}).encode()
    headers = {
        "Content-Type": "application/json",
        "X-Bot-Id": integration_id,
        "X-Bot-Signature": signing.request_header(secret, "POST", "/api/v1/escalations", body),
    }
    sent = time.monotonic()
    try:
        response = session.post(base + "/api/v1/escalations", data=body, headers=headers, timeout=30)
        status, conversation_id = response.status_code, response.json().get("id")
    except (requests.RequestException, ValueError) as exc:
        status, conversation_id = repr(exc)[:80], None
    answered = time.monotonic()
    event = {
        "kind": "posted", "t": sent, "scheduled": scheduled, "answered": answered, "status": status,
        "conversation_id": conversation_id if status == 201 else None, **extra,
    }  # fmt: skip
    with _print_lock:
        print(json.dumps(event), flush=True)


_print_lock = threading.Lock()


# --- coordinator -------------------------------------------------------------------------


class Lines:
    """Read a child's JSON lines in a thread as they come (a full pipe would stall the child)."""

    def __init__(self, stream: IO[str]) -> None:
        self.items: list[dict[str, Any]] = []
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self.thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            if line.startswith("{"):
                item = json.loads(line)
                if item.get("kind") == "ready":
                    self.ready.set()
                self.items.append(item)
        self.ready.set()


def bench_env(**extra: str) -> dict[str, str]:
    """The servers' environment in every benchmark: production settings against the benchmark's database
    (DEBUG's per-request static scan alone costs ~30 ms a request)."""
    from tests.processes import service_env

    return service_env(
        DEBUG="false",
        SECRET_KEY="bench-" + "x" * 40,
        ALLOWED_HOSTS="127.0.0.1,localhost",
        SECURE_SSL_REDIRECT="false",  # plain HTTP on loopback, no TLS proxy in front
        CALLBACK_ALLOWED_NETWORKS="127.0.0.0/8",  # callback receivers on loopback
        LOG_LEVEL=os.environ.get("BENCH_SERVER_LOG_LEVEL", "WARNING"),
        **extra,
    )


def cpu_by_role() -> dict[str, float]:
    """CPU seconds used so far by each part of the system on this machine (the benchmark's children,
    and every PostgreSQL and Redis server process): where the two cores go, per escalation."""
    import psutil

    roles: dict[str, float] = {}

    def add(role: str, proc: psutil.Process) -> None:
        try:
            times = proc.cpu_times()
        except psutil.Error:
            return
        roles[role] = roles.get(role, 0.0) + times.user + times.system

    for child in psutil.Process().children(recursive=True):
        try:
            cmdline = " ".join(child.cmdline())
        except psutil.Error:
            continue
        if "daphne" in cmdline:
            add("daphne (2 processes)", child)
        elif " beat " in cmdline:
            add("celery beat", child)
        elif "worker" in cmdline and "-Q celery " in cmdline:
            add("celery worker: dispatch", child)
        elif "worker" in cmdline:
            add("celery worker: callbacks, payouts", child)
        elif "--role agents" in cmdline:
            add("load: agents' WebSocket clients", child)
    for proc in psutil.process_iter(["name"]):
        if proc.info["name"] in ("postgres", "redis-server"):
            add("PostgreSQL" if proc.info["name"] == "postgres" else "Redis", proc)
    return roles


def prepare_database(server_url: str, name: str) -> str:
    import psycopg

    parts = urlsplit(server_url)
    admin = psycopg.connect(urlunsplit(parts._replace(path="/postgres")), autocommit=True)
    admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.execute(f'CREATE DATABASE "{name}"')
    admin.close()
    return urlunsplit(parts._replace(path=f"/{name}"))


def measure_floor(samples: int, row_id: str) -> list[float]:
    """One database transaction plus one channel-layer round trip through Redis."""
    from asgiref.sync import async_to_sync
    from channels.layers import get_channel_layer
    from django.db import connection, transaction

    layer = get_channel_layer()

    async def roundtrips() -> list[float]:
        from asgiref.sync import sync_to_async

        def tx() -> None:
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute("UPDATE marketplace_botintegration SET active = active WHERE id = %s", [row_id])

        run_tx = sync_to_async(tx, thread_sensitive=True)
        timings = []
        channel = await layer.new_channel()
        for _ in range(samples):
            started = time.perf_counter()
            await run_tx()
            await layer.send(channel, {"type": "floor"})
            await layer.receive(channel)
            timings.append((time.perf_counter() - started) * 1000)
        return timings

    return async_to_sync(roundtrips)()


def coordinator(args: argparse.Namespace) -> None:
    server = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/13")
    os.environ["DATABASE_URL"] = prepare_database(server, "bench_dispatch")
    os.environ["REDIS_URL"] = redis_url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings_dev")
    os.environ["LOG_LEVEL"] = "WARNING"
    os.environ["CALLBACK_ALLOWED_NETWORKS"] = "127.0.0.0/8"  # the benchmark's callback receivers are on loopback
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, check=True)

    import django

    django.setup()
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    from marketplace import services
    from tests.processes import celery_beat, celery_worker, daphne

    integration = services.integration_create(
        data=services.IntegrationInput(name="bench", callback_url="http://127.0.0.1:9/discard")
    )
    template = services.AgentInput("", "bench-pass-123", ["en"], ["billing"], 1)
    tokens = [token for _, token in services.agents_create_bulk(prefix="bench", count=args.agents, template=template)]

    logs = ROOT / "var" / "bench"
    logs.mkdir(parents=True, exist_ok=True)
    env = bench_env(
        CALLBACK_MAX_ATTEMPTS="1",
        OFFER_TIMEOUT_SECONDS="20",
        BOT_RATE_LIMIT_PER_MINUTE="1000000",  # one bot stands for many integrations here
    )
    me = [sys.executable, str(Path(__file__).resolve())]
    with ExitStack() as stack:
        for n in range(args.workers):  # as the Procfile runs them: dispatch workers, and one for callbacks
            stack.enter_context(celery_worker(env, logs / f"worker-{n}.log", concurrency=8, queues="celery"))
        stack.enter_context(celery_worker(env, logs / "callbacks.log", concurrency=8, queues="callbacks,payouts"))
        stack.enter_context(celery_beat(env, logs / "beat.log", logs))
        bases = [stack.enter_context(daphne(env, logs / f"daphne-{n}.log")) for n in range(1, args.web + 1)]
        floor = measure_floor(args.floor_samples, integration.id)

        print(f"connecting {len(tokens)} agents across {len(bases)} Daphne processes ...", flush=True)
        agent_procs = []
        for n, base in enumerate(bases):
            share = tokens[n :: len(bases)]
            proc = subprocess.Popen(
                [*me, "--role", "agents", "--base", base, "--handle", *map(str, args.handle)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                cwd=ROOT,
            )
            assert proc.stdin is not None
            proc.stdin.write("\n".join(share))
            proc.stdin.close()
            agent_procs.append(proc)
        for proc in agent_procs:  # wait until every agent is online
            assert proc.stdout is not None
            while (event := json.loads(proc.stdout.readline() or '{"kind": "eof"}'))["kind"] != "ready":
                if event["kind"] in ("eof", "ended", "failed"):
                    raise SystemExit(f"agents could not get online: {event}")
        print("all agents online; load starts", flush=True)
        # Read the agents' events as they come: a full pipe would block them mid-run and skew the figures.
        agent_lines = [Lines(proc.stdout) for proc in agent_procs]

        load_before = os.getloadavg()
        idle_from, idle_at = cpu_by_role(), time.monotonic()
        time.sleep(args.idle_seconds)  # what the system burns with nothing to do (heartbeats, sweepers)
        cpu_before, load_at = cpu_by_role(), time.monotonic()
        cpu_idle = {
            role: (cpu_before.get(role, 0.0) - idle_from.get(role, 0.0)) / (load_at - idle_at) for role in cpu_before
        }
        bot = subprocess.run(
            [
                *me,
                "--role",
                "bot",
                "--bases",
                ",".join(bases),
                "--integration",
                integration.id,
                "--secret",
                integration.secret,
                "--rate",
                str(args.rate),
                "--seconds",
                str(args.warmup + args.duration),
            ],  # fmt: skip
            capture_output=True,
            text=True,
            cwd=ROOT,
            env={**os.environ},
            check=True,
        )
        time.sleep(2)  # the last offers land
        loaded = time.monotonic() - load_at
        cpu_used = {
            role: seconds - cpu_before.get(role, 0.0) - cpu_idle.get(role, 0.0) * loaded
            for role, seconds in cpu_by_role().items()
        }
        for proc in agent_procs:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
        for lines in agent_lines:
            lines.thread.join(timeout=30)
        agent_events = [event for lines in agent_lines for event in lines.items]
    load_after = os.getloadavg()
    print(
        "load average (1, 5, 15 min) before the idle window {:.1f}/{:.1f}/{:.1f}, after the load {:.1f}/{:.1f}/{:.1f}"
        " (a figure above what this run explains means other work shared the machine)".format(*load_before, *load_after)
    )
    posted = [json.loads(line) for line in bot.stdout.splitlines()]
    cpu_used["load: bot"] = next((p["cpu"] for p in posted if p["kind"] == "cpu"), 0.0)
    report(args, floor, [p for p in posted if p["kind"] == "posted"], agent_events, cpu_used, cpu_idle)


def report(
    args: argparse.Namespace,
    floor: list[float],
    posted: list[dict],
    events: list[dict],
    cpu: dict[str, float],
    cpu_idle: dict[str, float],
) -> None:
    start = posted[0]["t"] + args.warmup if posted else 0
    stop = posted[-1]["t"] if posted else 0
    window = max(stop - start, 1e-9)
    sent = {p["conversation_id"]: p["t"] for p in posted if p["conversation_id"]}
    first_offer: dict[str, float] = {}
    for e in events:
        if e["kind"] == "offer":
            first_offer.setdefault(e["conversation_id"], e["t"])
    measured = {c for c, t in sent.items() if t >= start}
    to_offer = [(first_offer[c] - sent[c]) * 1000 for c in measured if c in first_offer]
    assigned = [e for e in events if e["kind"] == "assigned"]
    to_assigned = [(e["t"] - e["accept_sent"]) * 1000 for e in assigned if e["t"] >= start]
    http = [(p["answered"] - p["t"]) * 1000 for p in posted if p["t"] >= start]
    lag = [(p["t"] - p["scheduled"]) * 1000 for p in posted if p["t"] >= start]
    refused = [p["status"] for p in posted if p["status"] != 201]
    offers_in_window = sum(1 for t in first_offer.values() if start <= t <= stop)
    assigned_in_window = sum(1 for e in assigned if start <= e["t"] <= stop)
    floor_p50, floor_p99 = percentile(floor, 50), percentile(floor, 99)
    errors = sum(1 for e in events if e["kind"] == "error")
    print()
    print(f"agents={args.agents} rate={args.rate}/s duration={args.duration}s (+{args.warmup}s warm-up not counted)")
    print(f"cpu cores={os.cpu_count()} dispatch workers={args.workers} (+1 for callbacks), daphne processes={args.web}")
    print(summary("escalation -> offer", to_offer))
    print(summary("accept -> assigned", to_assigned))
    print(summary("bot POST (HTTP answer)", http))
    print(summary("floor (tx + layer rtt)", floor))
    print(
        f"ratio p99 offer/floor = {percentile(to_offer, 99) / floor_p99:.1f}x   "
        f"(p50 ratio {percentile(to_offer, 50) / floor_p50:.1f}x)"
    )
    print(
        f"in the measured window: {len(measured) / window:.1f} escalations/s accepted by the API, "
        f"{offers_in_window / window:.1f} offers/s, {assigned_in_window / window:.1f} assignments/s; "
        f"bot send lag p99 {percentile(lag, 99):.0f} ms"
    )
    never = len(set(sent) - set(first_offer))
    print(
        f"escalations={len(sent)} of {len(posted)} posted (non-201: {len(refused)}), offered={len(first_offer)}, "
        f"never offered={never}, assigned={len(assigned)}, ws errors={errors}"
    )
    statuses: dict[str, int] = {}
    for p in posted:
        statuses[str(p["status"])] = statuses.get(str(p["status"]), 0) + 1
    print("answers to the bot: " + ", ".join(f"{code} x{n}" for code, n in sorted(statuses.items())))
    # Offers made in each 5 s of the measured window: "no collapse" means the lowest stays near the ceiling.
    slices = [
        sum(1 for t in first_offer.values() if start + k * 5 <= t < start + (k + 1) * 5) / 5
        for k in range(int(window // 5))
    ]
    if slices:
        each = " ".join(f"{v:.1f}" for v in slices)
        print(f"offers/s in each 5 s: min {min(slices):.1f}, max {max(slices):.1f}  [{each}]")
    accepted = len(sent) or 1
    total = len(posted) or 1
    server_ms = sum(v for k, v in cpu.items() if not k.startswith("load")) * 1000
    print(f"server CPU per conversation taken in (201): {server_ms / accepted:.1f} ms")
    print(
        f"CPU by part of the system: idle (before the load, {args.idle_seconds:g} s) and per escalation "
        f"(all {len(posted)} posted, warm-up included, the idle rate taken off):"
    )
    for role, seconds in sorted(cpu.items(), key=lambda item: -item[1]):
        print(f"  {role:<36} idle {cpu_idle.get(role, 0.0) * 100:5.1f}% of a core   {seconds * 1000 / total:6.1f} ms")
    server = sum(v for k, v in cpu.items() if not k.startswith("load"))
    idle = sum(v for k, v in cpu_idle.items() if not k.startswith("load"))
    print(
        f"  {'all servers (without the load)':<36} idle {idle * 100:5.1f}% of a core   {server * 1000 / total:6.1f} ms"
    )
    if args.out:
        row = {
            "cpu_ms": {role: seconds * 1000 / total for role, seconds in cpu.items()},
            "cpu_idle": cpu_idle,
            "agents": args.agents, "rate": args.rate, "duration": args.duration,
            "workers": args.workers, "web": args.web,
            "offer": [percentile(to_offer, q) for q in (50, 99)], "offer_max": max(to_offer, default=None),
            "assigned": [percentile(to_assigned, q) for q in (50, 99)],
            "post": [percentile(http, q) for q in (50, 99)], "floor": [floor_p50, floor_p99],
            "api_rate": len(measured) / window, "offer_rate": offers_in_window / window,
            "assigned_rate": assigned_in_window / window, "non_201": len(refused), "never_offered": never,
            "ws_errors": errors, "n": len(to_offer), "statuses": statuses, "offer_rate_slices": slices,
            "cpu_ms_per_conversation": server_ms / accepted,
        }  # fmt: skip
        with open(args.out, "a") as out:
            out.write(json.dumps(row) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=20, help="escalations per second")
    parser.add_argument("--duration", type=float, default=30, help="seconds of load after warm-up")
    parser.add_argument("--warmup", type=float, default=5)
    parser.add_argument("--handle", type=float, nargs=2, default=(0.2, 0.8), help="resolve after U(a, b) seconds")
    parser.add_argument("--out", help="append a JSON line with the figures to this file (bench/plot_dispatch.py)")
    parser.add_argument("--workers", type=int, default=1, help="Celery worker processes for the default queue")
    parser.add_argument("--web", type=int, default=2, help="Daphne processes (the agents are split across them)")
    parser.add_argument("--floor-samples", type=int, default=300)
    parser.add_argument("--idle-seconds", type=float, default=10, help="CPU measured idle before the load")
    parser.add_argument("--chat", action="store_true", help="agents send one message before resolving")
    parser.add_argument("--role", choices=["coordinator", "agents", "bot"], default="coordinator")
    parser.add_argument("--base")
    parser.add_argument("--bases")
    parser.add_argument("--integration")
    parser.add_argument("--secret")
    parser.add_argument("--seconds", type=float)
    args = parser.parse_args()
    if args.role == "agents":
        signal.signal(signal.SIGTERM, lambda *_: (sys.stdout.flush(), os._exit(0)))
        tokens = [line.strip() for line in sys.stdin if line.strip()]
        low, high = args.handle
        asyncio.run(agents_role(args.base, tokens, lambda: random.uniform(low, high), chat=args.chat))
    elif args.role == "bot":
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings_dev")
        bot_role(args.bases.split(","), args.integration, args.secret, args.rate, args.seconds)
    else:
        coordinator(args)


if __name__ == "__main__":
    main()
