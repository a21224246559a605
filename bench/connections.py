"""Connection capacity of ONE Daphne process: idle agents with heartbeats.

One Daphne process, a Celery worker for the default queue, one for callbacks
and payouts, and beat (as the Procfile runs them), on PostgreSQL and a private
Redis (so that Redis's INFO counts only this benchmark). Agents connect in
batches (1,000, 2,000, ... up to --max) from several client processes (asyncio
+ `websockets`), so that the clients are not the bottleneck. Each agent does
what the app does when idle: it sends `{"type": "ping"}` every --ping-every
seconds (static/app/app.js: 25 s) and answers Daphne's WebSocket pings (every
20 s of silence).

At each step, after the batch has connected and settled, during an idle window
of --window seconds it measures: Daphne's RSS and USS, memory per connection
(delta RSS / delta connections), Daphne's CPU while idle, open fds, the time to
connect the batch and connect failures, a ping -> pong round trip (p50/p99,
paced samples on random sockets), Redis connected_clients and used_memory, and
PostgreSQL backends on the benchmark's database.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres \\
        .venv/bin/python bench/connections.py --max 10000 --step 1000

It creates (and drops) the database `bench_capacity` on that server and starts
its own redis-server on a free port. Results: var/bench/connections.json and
docs/img/connections.png; server logs in var/bench/capacity/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from dispatch_latency import percentile, prepare_database  # noqa: E402
from probes import pg_connections, private_redis, process_sample, raise_nofile, redis_sample  # noqa: E402

DB_NAME = "bench_capacity"
KIB, MIB = 1024, 1024 * 1024


# --- role: clients (several processes; commands on stdin, answers on stdout) -------------


async def clients_role(base: str, ping_every: float, in_flight: int) -> None:
    from websockets.asyncio.client import ClientConnection, connect

    class Agent:
        def __init__(self, ws: ClientConnection) -> None:
            self.ws = ws
            self.pong: asyncio.Future[float] | None = None
            self.closed: int | None = None

    agents: list[Agent] = []
    closed_codes: dict[str, int] = {}
    loop = asyncio.get_running_loop()

    def answer(**content: Any) -> None:
        sys.stdout.write(json.dumps(content) + "\n")
        sys.stdout.flush()

    async def live(agent: Agent) -> None:
        async def heartbeat() -> None:  # as the app does, at a random phase
            await asyncio.sleep(random.uniform(0, ping_every))
            while True:
                if agent.pong is None:  # a measured ping is in flight: that one counts
                    await agent.ws.send('{"type":"ping"}')
                await asyncio.sleep(ping_every)

        beat = asyncio.create_task(heartbeat())
        try:
            async for raw in agent.ws:
                if agent.pong is not None and '"pong"' in raw and not agent.pong.done():
                    agent.pong.set_result(time.perf_counter())
        except Exception:  # noqa: BLE001, S110 - a lost socket is counted below, not raised
            pass
        finally:
            beat.cancel()
            code = agent.ws.close_code
            agent.closed = code if code is not None else -1
            closed_codes[str(agent.closed)] = closed_codes.get(str(agent.closed), 0) + 1

    semaphore = asyncio.Semaphore(in_flight)

    async def open_one(token: str) -> float:
        url = base.replace("http", "ws", 1) + f"/ws/agent/?token={token}"
        async with semaphore:
            started = time.perf_counter()
            ws = await connect(url, open_timeout=60, ping_interval=None, max_queue=None)
            try:
                hello = json.loads(await asyncio.wait_for(ws.recv(), 60))
            except BaseException:
                await ws.close()
                raise
            if hello.get("type") != "hello":
                await ws.close()
                raise RuntimeError(f"expected hello, got {hello.get('type')}")
            elapsed = time.perf_counter() - started
        agent = Agent(ws)
        agents.append(agent)
        asyncio.create_task(live(agent))
        return elapsed

    async def connect_batch(tokens: list[str], retries: int) -> None:
        """Connect every token; a failed one is retried (as the app does, after a jittered pause)."""
        started = time.perf_counter()
        errors: dict[str, int] = {}
        times: list[float] = []
        first_failed = 0

        async def with_retries(token: str) -> None:
            nonlocal first_failed
            for attempt in range(retries + 1):
                try:
                    times.append(await open_one(token))
                    return
                except Exception as exc:  # noqa: BLE001 - counted and retried
                    key = f"{type(exc).__name__}: {str(exc)[:80]}"
                    errors[key] = errors.get(key, 0) + 1
                    first_failed += attempt == 0
                    if attempt < retries:
                        await asyncio.sleep(random.uniform(0.5, 2.0) * 2**attempt)

        await asyncio.gather(*(with_retries(t) for t in tokens))
        answer(
            kind="connected",
            ok=len(times),
            failed=len(tokens) - len(times),
            first_failed=first_failed,
            errors=errors,
            seconds=time.perf_counter() - started,
            handshake_p50=percentile(times, 50),
            handshake_p99=percentile(times, 99),
            open=sum(1 for a in agents if a.closed is None),
        )

    async def pings(n: int, over: float) -> None:
        rtts: list[float] = []
        timeouts = 0
        gap = over / max(n, 1)
        for _ in range(n):
            alive = [a for a in agents if a.closed is None and a.pong is None]
            if alive:
                agent = random.choice(alive)
                agent.pong = loop.create_future()
                sent = time.perf_counter()
                try:
                    await agent.ws.send('{"type":"ping"}')
                    rtts.append((await asyncio.wait_for(agent.pong, 10) - sent) * 1000)
                except (TimeoutError, Exception):  # noqa: BLE001
                    timeouts += 1
                finally:
                    agent.pong = None
            await asyncio.sleep(gap)
        answer(kind="pings", rtts=rtts, timeouts=timeouts, open=sum(1 for a in agents if a.closed is None))

    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        command = json.loads(line)
        if command["cmd"] == "connect":
            await connect_batch(command["tokens"], command["retries"])
        elif command["cmd"] == "pings":
            await pings(command["n"], command["over"])
        elif command["cmd"] == "status":
            answer(kind="status", open=sum(1 for a in agents if a.closed is None), closed=closed_codes)
        elif command["cmd"] == "quit":
            break
    for agent in agents:
        if agent.closed is None:
            await agent.ws.close()


# --- coordinator -----------------------------------------------------------------------------


class Client:
    """One client process, spoken to over its stdin/stdout."""

    def __init__(self, base: str, args: argparse.Namespace) -> None:
        me = [sys.executable, str(Path(__file__).resolve())]
        self.proc = subprocess.Popen(
            [*me, "--role", "clients", "--base", base, "--ping-every", str(args.ping_every),
             "--in-flight", str(args.in_flight)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )  # fmt: skip

    def send(self, **command: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()

    def read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"a client process ended (exit {self.proc.poll()})")
        return dict(json.loads(line))


def each(clients: list[Client], commands: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for client, command in zip(clients, commands, strict=True):
        client.send(**command)
    return [client.read() for client in clients]


def coordinator(args: argparse.Namespace) -> None:
    limits_before, limits_after = raise_nofile()
    server = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
    from tests.processes import free_port

    with ExitStack() as stack:
        redis_url = stack.enter_context(private_redis(free_port()))
        os.environ["DATABASE_URL"] = prepare_database(server, DB_NAME)
        os.environ["REDIS_URL"] = redis_url
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings_dev")
        os.environ["LOG_LEVEL"] = "WARNING"
        os.environ["CALLBACK_ALLOWED_NETWORKS"] = "127.0.0.0/8"  # the benchmark's callback receivers are on loopback
        subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, check=True)
        import django

        django.setup()
        from marketplace import services
        from tests.processes import celery_beat, celery_worker, daphne, service_env

        print(f"RLIMIT_NOFILE soft/hard: before {limits_before}, after {limits_after} (inherited by every process)")
        started = time.monotonic()
        template = services.AgentInput("", "bench-pass-123", ["en"], ["billing"], 1)
        tokens = [t for _, t in services.agents_create_bulk(prefix="cap", count=args.max, template=template)]
        print(f"{len(tokens)} agents created in {time.monotonic() - started:.0f} s", flush=True)

        logs = ROOT / "var" / "bench" / "capacity"
        logs.mkdir(parents=True, exist_ok=True)
        env = service_env(
            DEBUG="false",
            SECRET_KEY="bench-" + "x" * 40,
            ALLOWED_HOSTS="127.0.0.1,localhost",
            SECURE_SSL_REDIRECT="false",  # plain HTTP on loopback, no TLS proxy in front
            LOG_LEVEL="WARNING",
        )
        stack.enter_context(celery_worker(env, logs / "worker.log", concurrency=8, queues="celery"))
        stack.enter_context(celery_worker(env, logs / "callbacks.log", concurrency=16, queues="callbacks,payouts"))
        stack.enter_context(celery_beat(env, logs / "beat.log", logs))
        base = stack.enter_context(daphne(env, logs / "daphne.log"))
        port = base.rsplit(":", 1)[1]
        import psutil

        daphne_proc = next(
            c for c in psutil.Process().children() if "daphne" in " ".join(c.cmdline()) and port in c.cmdline()
        )
        print(f"Daphne pid {daphne_proc.pid}, limits {daphne_proc.rlimit(psutil.RLIMIT_NOFILE)}", flush=True)

        clients = [Client(base, args) for _ in range(args.clients)]
        for client in clients:
            stack.callback(client.proc.kill)
        rows: list[dict[str, Any]] = []
        time.sleep(args.settle)
        rows.append(measure(args, daphne_proc, clients, redis_url, server, 0, None))
        print_row(rows[-1], rows[0])
        connected = 0
        while connected < args.max:
            batch = tokens[connected : connected + args.step]
            shares = [batch[n :: len(clients)] for n in range(len(clients))]
            t0 = time.monotonic()
            answers = each(clients, [{"cmd": "connect", "tokens": share, "retries": args.retries} for share in shares])
            connect_seconds = time.monotonic() - t0
            connected += len(batch)
            failed = sum(a["failed"] for a in answers)
            first_failed = sum(a["first_failed"] for a in answers)
            errors: dict[str, int] = {}
            for a in answers:
                for k, v in a["errors"].items():
                    errors[k] = errors.get(k, 0) + v
            connect = {
                "batch": len(batch),
                "seconds": connect_seconds,
                "failed": failed,
                "first_failed": first_failed,
                "errors": errors,
                "handshake_p99": max(a["handshake_p99"] for a in answers),
            }
            time.sleep(args.settle)
            rows.append(measure(args, daphne_proc, clients, redis_url, server, connected, connect))
            print_row(rows[-1], rows[0])
            if failed > 0.02 * len(batch) or not daphne_proc.is_running():
                print(f"stopping: {failed} of {len(batch)} failed to connect, retries included ({errors})", flush=True)
                break
        status = each(clients, [{"cmd": "status"}] * len(clients))
        closed: dict[str, int] = {}
        for s in status:
            for k, v in s["closed"].items():
                closed[k] = closed.get(k, 0) + v
        for client in clients:
            client.send(cmd="quit")
    out = ROOT / "var" / "bench" / "connections.json"
    meta = {
        "limits_before": limits_before,
        "limits_after": limits_after,
        "clients": args.clients,
        "ping_every": args.ping_every,
        "window": args.window,
        "closed_by_server_during_run": closed,
        "cpus": os.cpu_count(),
    }
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    report(rows, meta)
    plot(rows, ROOT / "docs" / "img" / "connections.png")


def measure(
    args: argparse.Namespace,
    daphne_proc: Any,
    clients: list[Client],
    redis_url: str,
    server: str,
    connections: int,
    connect: dict[str, Any] | None,
) -> dict[str, Any]:
    """An idle window: CPU over it, pings paced across it, then memory, fds, Redis and PostgreSQL."""
    before = process_sample(daphne_proc)
    t0 = time.monotonic()
    per_client = max(1, args.pings // len(clients))
    answers = each(clients, [{"cmd": "pings", "n": per_client, "over": args.window}] * len(clients))
    elapsed = time.monotonic() - t0
    after = process_sample(daphne_proc, uss=True)
    rtts = [r for a in answers for r in a["rtts"]]
    from urllib.parse import urlsplit, urlunsplit

    admin = urlunsplit(urlsplit(server)._replace(path="/postgres"))
    return {
        "connections": connections,
        "open": sum(a["open"] for a in answers),
        "rss": after["rss"],
        "uss": after["uss"],
        "fds": after["fds"],
        "threads": after["threads"],
        "cpu_percent": 100 * (after["cpu"] - before["cpu"]) / elapsed,
        "ping_p50": percentile(rtts, 50),
        "ping_p99": percentile(rtts, 99),
        "ping_n": len(rtts),
        "ping_timeouts": sum(a["timeouts"] for a in answers),
        "redis": redis_sample(redis_url),
        "pg": pg_connections(admin, DB_NAME),
        "connect": connect,
    }


def print_row(row: dict[str, Any], base: dict[str, Any]) -> None:
    per = (row["rss"] - base["rss"]) / row["connections"] / KIB if row["connections"] else float("nan")
    c = row["connect"] or {}
    print(
        f"conns={row['connections']:>6} open={row['open']:>6} rss={row['rss'] / MIB:7.1f} MiB "
        f"uss={row['uss'] / MIB:7.1f} MiB per-conn={per:5.1f} KiB fds={row['fds']:>6} cpu={row['cpu_percent']:5.1f}% "
        f"ping p50/p99={row['ping_p50']:.1f}/{row['ping_p99']:.1f} ms "
        f"connect {c.get('batch', 0)} in {c.get('seconds', 0):.1f} s "
        f"failed first/after retries={c.get('first_failed', 0)}/{c.get('failed', 0)} "
        f"redis clients={row['redis']['clients']} mem={row['redis']['used_memory'] / MIB:.1f} MiB pg={row['pg']}",
        flush=True,
    )


def report(rows: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    base = rows[0]
    print()
    print(
        "| connections | open | Daphne RSS | USS | RSS per conn (total / this step) | Daphne CPU idle | fds "
        "| batch connect (s, rate, failed 1st try / after retries) | ping p50 / p99 | Redis clients / used_memory "
        "| PG conns |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    prev = base
    for row in rows:
        n = row["connections"]
        c = row["connect"]
        total = f"{(row['rss'] - base['rss']) / n / KIB:.1f}" if n else "-"
        step = f"{(row['rss'] - prev['rss']) / (n - prev['connections']) / KIB:.1f}" if n else "-"
        connect = (
            f"{c['seconds']:.1f} s, {c['batch'] / c['seconds']:.0f}/s, {c['first_failed']}/{c['failed']}" if c else "-"
        )
        print(
            f"| {n:,} | {row['open']:,} | {row['rss'] / MIB:.0f} MiB | {row['uss'] / MIB:.0f} MiB | "
            f"{total} / {step} KiB | {row['cpu_percent']:.1f}% | {row['fds']:,} | {connect} | "
            f"{row['ping_p50']:.1f} / {row['ping_p99']:.1f} ms | {row['redis']['clients']} / "
            f"{row['redis']['used_memory'] / MIB:.1f} MiB | {row['pg']} |"
        )
        prev = row
    if len(rows) > 2:
        xs = [r["connections"] for r in rows[1:]]
        ys = [r["rss"] for r in rows[1:]]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)
        print(f"\nRSS slope (least squares over {xs[0]:,}..{xs[-1]:,}): {slope / KIB:.1f} KiB per connection")
    print(f"closed during the run (client side, by code): {meta['closed_by_server_during_run']}")
    print(f"RLIMIT_NOFILE before {meta['limits_before']} after {meta['limits_after']}")


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = rows[0]
    data = rows[1:]
    n = [r["connections"] for r in data]
    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(14, 4.2))
    left.plot([0, *n], [base["rss"] / MIB, *[r["rss"] / MIB for r in data]], "o-", label="RSS")
    left.plot([0, *n], [base["uss"] / MIB, *[r["uss"] / MIB for r in data]], "s--", label="USS")
    left.set_xlabel("idle connections")
    left.set_ylabel("Daphne memory (MiB)")
    left.set_title("One Daphne process")
    left.legend()
    left.grid(alpha=0.3)
    total = [(r["rss"] - base["rss"]) / r["connections"] / KIB for r in data]
    prev = [base, *data[:-1]]
    pairs = zip(data, prev, strict=True)
    step = [(r["rss"] - p["rss"]) / (r["connections"] - p["connections"]) / KIB for r, p in pairs]
    middle.plot(n, total, "o-", label="(RSS - RSS at 0) / connections")
    middle.plot(n, step, "s--", label="ΔRSS / Δconnections (this step)")
    middle.axhline(50, color="red", linestyle=":", label="goal: 50 KiB")
    middle.set_xlabel("idle connections")
    middle.set_ylabel("KiB per connection")
    middle.set_ylim(bottom=0)
    middle.set_title("Memory per connection")
    middle.legend(fontsize=8)
    middle.grid(alpha=0.3)
    right.plot(n, [r["cpu_percent"] for r in data], "o-", color="tab:green", label="Daphne CPU idle (%)")
    right.set_xlabel("idle connections")
    right.set_ylabel("CPU % of one core")
    right.set_ylim(bottom=0)
    twin = right.twinx()
    twin.plot(n, [r["ping_p99"] for r in data], "s--", color="tab:purple", label="ping p99 (ms)")
    twin.set_ylabel("ping round trip p99 (ms)")
    twin.set_ylim(bottom=0)
    right.set_title("Idle cost: heartbeats")
    handles = right.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    right.legend(handles, [h.get_label() for h in handles], fontsize=8, loc="upper left")
    right.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"plot: {path.relative_to(ROOT)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max", type=int, default=10000, help="connections at the last step")
    parser.add_argument("--step", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=4, help="client processes")
    parser.add_argument("--in-flight", type=int, default=5, help="handshakes at once per client process")
    parser.add_argument("--retries", type=int, default=3, help="retries of a failed connect (jittered back-off)")
    parser.add_argument("--ping-every", type=float, default=25, help="app heartbeat (static/app/app.js: 25 s)")
    parser.add_argument("--window", type=float, default=30, help="idle measurement window per step (s)")
    parser.add_argument("--settle", type=float, default=5, help="pause after a batch before measuring (s)")
    parser.add_argument("--pings", type=int, default=200, help="measured pings per step (all clients)")
    parser.add_argument("--role", choices=["coordinator", "clients"], default="coordinator")
    parser.add_argument("--base")
    args = parser.parse_args()
    if args.role == "clients":
        raise_nofile()
        asyncio.run(clients_role(args.base, args.ping_every, args.in_flight))
    else:
        coordinator(args)


if __name__ == "__main__":
    main()
