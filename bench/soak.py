"""Soak: steady load for --minutes; memory, database and Redis connections must stay flat.

Servers as the Procfile runs them: two Daphne processes, a Celery worker for the
default queue, one for callbacks and payouts, and beat, on PostgreSQL and a
private Redis (so that Redis's INFO counts only this benchmark). --agents agents
(one client process per Daphne, bench/dispatch_latency.py's agents role) accept
every offer at once, send one message, and resolve after U(--handle) seconds; a
bot process posts --rate signed escalations a second; the bot's callback
endpoint is a local HTTP server that answers 200, so callbacks are delivered.

Every --every seconds: RSS and open fds of every server process, PostgreSQL
backends on the benchmark's database, Redis connected_clients and used_memory.
Per minute: escalation -> offer p50/p99. At the end: a table, a verdict (RSS
slope over the last 2/3 of the run per process, connection counts min/max), and
an exactly-once check (every conversation assigned once, resolved, every
callback event delivered and received).

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres \\
        .venv/bin/python bench/soak.py --minutes 10 --agents 200 --rate 5

It creates (and drops) the database `bench_soak` and starts its own redis-server.
Results: var/bench/soak.json and docs/img/soak.png; server logs in var/bench/soak/.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import ExitStack
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from dispatch_latency import Lines, bench_env, percentile, prepare_database  # noqa: E402
from probes import (  # noqa: E402
    pg_connections,
    private_redis,
    process_sample,
    raise_nofile,
    redis_sample,
    server_processes,
)

DB_NAME = "bench_soak"
KIB, MIB = 1024, 1024 * 1024


class CallbackLog:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.received: list[tuple[str, str, str]] = []  # (event id, type, conversation id)


def receiver(log: CallbackLog) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            with log.lock:
                log.received.append((body["id"], body["type"], body["conversation_id"]))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


def coordinator(args: argparse.Namespace) -> None:
    limits = raise_nofile()
    server = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
    admin = urlunsplit(urlsplit(server)._replace(path="/postgres"))
    from tests.processes import free_port, local_http_server

    callbacks = CallbackLog()
    samples: list[dict[str, Any]] = []
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
        from tests.processes import celery_beat, celery_worker, daphne

        callback_base = stack.enter_context(local_http_server(receiver(callbacks)))
        integration = services.integration_create(
            data=services.IntegrationInput(name="soak", callback_url=callback_base + "/callbacks")
        )
        template = services.AgentInput("", "bench-pass-123", ["en"], ["billing"], 1)
        tokens = [t for _, t in services.agents_create_bulk(prefix="soak", count=args.agents, template=template)]
        logs = ROOT / "var" / "bench" / "soak"
        logs.mkdir(parents=True, exist_ok=True)
        env = bench_env(OFFER_TIMEOUT_SECONDS="20")
        stack.enter_context(celery_worker(env, logs / "worker.log", concurrency=8, queues="celery"))
        stack.enter_context(celery_worker(env, logs / "callbacks.log", concurrency=16, queues="callbacks,payouts"))
        stack.enter_context(celery_beat(env, logs / "beat.log", logs))
        bases = [stack.enter_context(daphne(env, logs / f"daphne-{n}.log")) for n in (1, 2)]
        processes = server_processes()
        print(f"RLIMIT_NOFILE {limits[0]} -> {limits[1]}; server processes: {sorted(processes)}", flush=True)

        me = [sys.executable, str(ROOT / "bench" / "dispatch_latency.py")]
        agent_procs, agent_lines = [], []
        for n, base in enumerate(bases):
            proc = subprocess.Popen(
                [*me, "--role", "agents", "--base", base, "--handle", *map(str, args.handle), "--chat"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                cwd=ROOT,
            )
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write("\n".join(tokens[n :: len(bases)]))
            proc.stdin.close()
            agent_procs.append(proc)
            agent_lines.append(Lines(proc.stdout))
        for lines in agent_lines:
            if not lines.ready.wait(120) or lines.items[-1]["kind"] != "ready":
                raise SystemExit(f"agents could not get online: {lines.items[-1:]}")
        print(f"{args.agents} agents online; {args.rate}/s for {args.minutes} min", flush=True)

        seconds = args.minutes * 60
        bot = subprocess.Popen(
            [*me, "--role", "bot", "--bases", ",".join(bases), "--integration", integration.id,
             "--secret", integration.secret, "--rate", str(args.rate), "--seconds", str(seconds)],
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env={**os.environ},
        )  # fmt: skip
        assert bot.stdout is not None
        bot_lines = Lines(bot.stdout)
        t0 = time.monotonic()
        header(processes)
        next_at = t0
        drain_until = None
        while True:
            samples.append(sample(t0, processes, admin, redis_url))
            print_sample(samples[-1], processes)
            if drain_until is None and bot.poll() is not None:
                drain_until = time.monotonic() + args.drain
            if drain_until is not None and (drained() or time.monotonic() > drain_until):
                break
            next_at += args.every
            time.sleep(max(0.0, next_at - time.monotonic()))
        samples.append(sample(t0, processes, admin, redis_url))
        print_sample(samples[-1], processes)
        for proc in agent_procs:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
        for lines in agent_lines:
            lines.thread.join(timeout=10)
        bot_lines.thread.join(timeout=10)
        check = exactly_once(callbacks, bot_lines.items)
    events = [e for lines in agent_lines for e in lines.items]
    kinds: dict[str, int] = {}
    for e in events:
        kinds[e["kind"]] = kinds.get(e["kind"], 0) + 1
    check["agent_events"] = kinds
    check["agent_failures"] = [e["failures"] for e in events if e["kind"] == "ended"]
    minutes = per_minute(bot_lines.items, events)
    result = {
        "args": vars(args),
        "limits": limits,
        "samples": samples,
        "minutes": minutes,
        "check": check,
        "processes": sorted(processes),
    }
    (ROOT / "var" / "bench" / "soak.json").write_text(json.dumps(result, indent=1))
    report(result, seconds)
    plot(result, ROOT / "docs" / "img" / "soak.png")


def drained() -> bool:
    """Every conversation resolved and every callback event delivered."""
    from marketplace.models import CallbackEvent, Conversation

    return (
        not Conversation.objects.exclude(status=Conversation.Status.RESOLVED).exists()
        and not CallbackEvent.objects.exclude(state=CallbackEvent.State.DELIVERED).exists()
    )


def sample(t0: float, processes: dict[str, Any], admin: str, redis_url: str) -> dict[str, Any]:
    row: dict[str, Any] = {"t": time.monotonic() - t0, "proc": {}}
    for name, process in processes.items():
        try:
            row["proc"][name] = process_sample(process)
        except Exception:  # noqa: BLE001 - a dead process is reported as missing
            row["proc"][name] = None
    row["pg"] = pg_connections(admin, DB_NAME)
    row["redis"] = redis_sample(redis_url)
    return row


def header(processes: dict[str, Any]) -> None:
    names = " ".join(f"{n[:22]:>22}" for n in sorted(processes))
    print(f"{'t (s)':>6} {names}  (RSS MiB / fds)   pg  redis clients / MiB", flush=True)


def print_sample(row: dict[str, Any], processes: dict[str, Any]) -> None:
    cells = []
    for name in sorted(processes):
        p = row["proc"].get(name)
        cells.append(f"{p['rss'] / MIB:14.1f} / {p['fds']:5d}" if p else f"{'dead':>22}")
    redis = row["redis"]
    print(
        f"{row['t']:6.0f} {' '.join(cells)}  {row['pg']:5d}  {redis['clients']:5d} / {redis['used_memory'] / MIB:.1f}",
        flush=True,
    )


def per_minute(posted: list[dict[str, Any]], events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    posts = [p for p in posted if p.get("kind") == "posted"]
    if not posts:
        return []
    start = posts[0]["t"]
    sent = {p["conversation_id"]: p["t"] for p in posts if p["conversation_id"]}
    first: dict[str, float] = {}
    for e in events:
        if e["kind"] == "offer":
            first.setdefault(e["conversation_id"], e["t"])
    buckets: dict[int, list[float]] = {}
    for cid, t in sent.items():
        if cid in first:
            buckets.setdefault(int((t - start) // 60), []).append((first[cid] - t) * 1000)
    assigned: dict[int, list[float]] = {}
    for e in events:
        if e["kind"] == "assigned":
            assigned.setdefault(int((e["t"] - start) // 60), []).append((e["t"] - e["accept_sent"]) * 1000)
    posted_per: dict[int, int] = {}
    for p in posts:
        posted_per[int((p["t"] - start) // 60)] = posted_per.get(int((p["t"] - start) // 60), 0) + 1
    return [
        {
            "minute": m,
            "posted": posted_per.get(m, 0),
            "offered": len(buckets.get(m, [])),
            "offer_p50": percentile(buckets.get(m, []), 50),
            "offer_p99": percentile(buckets.get(m, []), 99),
            "assigned_p50": percentile(assigned.get(m, []), 50),
            "assigned_p99": percentile(assigned.get(m, []), 99),
        }
        for m in sorted(posted_per)
    ]


def exactly_once(callbacks: CallbackLog, posted: list[dict[str, Any]]) -> dict[str, Any]:
    from django.db.models import Count, Q

    from dispatch.models import Assignment, Offer
    from marketplace.models import CallbackEvent, Conversation

    created = [p["conversation_id"] for p in posted if p.get("kind") == "posted" and p["conversation_id"]]
    conversations = Conversation.objects.annotate(
        n_assignments=Count("assignments", distinct=True),
        n_accepted=Count("offers", filter=Q(offers__state=Offer.State.ACCEPTED), distinct=True),
    )
    by_status: dict[str, int] = {}
    for status in conversations.values_list("status", flat=True):
        by_status[status] = by_status.get(status, 0) + 1
    events = dict(CallbackEvent.objects.values_list("id", "state"))
    with callbacks.lock:
        received = list(callbacks.received)
    received_ids = [r[0] for r in received]
    return {
        "posted": len([p for p in posted if p.get("kind") == "posted"]),
        "created": len(created),
        "conversations": conversations.count(),
        "by_status": by_status,
        "assigned_not_once": conversations.exclude(n_assignments=1).count(),
        "accepted_offers_not_once": conversations.exclude(n_accepted=1).count(),
        "assignments": Assignment.objects.count(),
        "callback_events": len(events),
        "callback_events_not_delivered": sum(1 for s in events.values() if s != CallbackEvent.State.DELIVERED),
        "callbacks_received": len(received),
        "callback_events_never_received": len(set(events) - set(received_ids)),
        "callbacks_received_twice": len(received_ids) - len(set(received_ids)),
    }


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope (units per x)."""
    if len(points) < 2:
        return float("nan")
    mx = sum(x for x, _ in points) / len(points)
    my = sum(y for _, y in points) / len(points)
    den = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / den if den else float("nan")


def report(result: dict[str, Any], seconds: float) -> None:
    samples = [s for s in result["samples"] if s["t"] <= seconds + 1]
    tail = [s for s in samples if s["t"] >= seconds / 3]
    print()
    print("| process | RSS first / last (MiB) | RSS slope, last 2/3 (KiB/min) | open fds min / max |")
    print("|---|---|---|---|")
    for name in result["processes"]:
        series = [(s["t"] / 60, s["proc"][name]["rss"] / KIB) for s in tail if s["proc"].get(name)]
        fds = [s["proc"][name]["fds"] for s in samples if s["proc"].get(name)]
        first, last = samples[0]["proc"][name], samples[-1]["proc"][name]
        print(
            f"| {name} | {first['rss'] / MIB:.1f} / {last['rss'] / MIB:.1f} | {slope(series):+.0f} | "
            f"{min(fds)} / {max(fds)} |"
        )
    pg = [s["pg"] for s in samples]
    clients = [s["redis"]["clients"] for s in samples]
    memory = [(s["t"] / 60, s["redis"]["used_memory"] / KIB) for s in tail]
    print(f"\nPostgreSQL backends min / max: {min(pg)} / {max(pg)}")
    print(f"Redis connected_clients min / max: {min(clients)} / {max(clients)}")
    print(
        f"Redis used_memory first / last: {samples[0]['redis']['used_memory'] / MIB:.1f} / "
        f"{samples[-1]['redis']['used_memory'] / MIB:.1f} MiB, slope last 2/3 {slope(memory):+.0f} KiB/min"
    )
    print("\n| minute | posted | offered | escalation -> offer p50 / p99 | accept -> assigned p50 / p99 |")
    print("|---|---|---|---|---|")
    for m in result["minutes"]:
        print(
            f"| {m['minute'] + 1} | {m['posted']} | {m['offered']} | {m['offer_p50']:.0f} / {m['offer_p99']:.0f} ms | "
            f"{m['assigned_p50']:.0f} / {m['assigned_p99']:.0f} ms |"
        )
    print(f"\nexactly once: {json.dumps(result['check'])}")


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = result["samples"]
    minutes = [s["t"] / 60 for s in samples]
    fig, axes = plt.subplots(2, 2, figsize=(13, 8))
    rss, conns, fds, latency = axes[0][0], axes[0][1], axes[1][0], axes[1][1]
    for name in result["processes"]:
        xs = [m for m, s in zip(minutes, samples, strict=True) if s["proc"].get(name)]
        rss.plot(xs, [s["proc"][name]["rss"] / MIB for s in samples if s["proc"].get(name)], label=name)
        fds.plot(xs, [s["proc"][name]["fds"] for s in samples if s["proc"].get(name)], label=name)
    rss.set_title("RSS per server process")
    rss.set_ylabel("MiB")
    rss.set_ylim(bottom=0)
    fds.set_title("Open file descriptors per process")
    fds.set_ylim(bottom=0)
    conns.plot(minutes, [s["pg"] for s in samples], label="PostgreSQL backends (pg_stat_activity)")
    conns.plot(minutes, [s["redis"]["clients"] for s in samples], label="Redis connected_clients")
    twin = conns.twinx()
    twin.plot(minutes, [s["redis"]["used_memory"] / MIB for s in samples], "k:", label="Redis used_memory (MiB)")
    twin.set_ylabel("Redis used_memory (MiB)")
    twin.set_ylim(bottom=0)
    conns.set_title("Connections")
    conns.set_ylim(bottom=0)
    handles = conns.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    conns.legend(handles, [h.get_label() for h in handles], fontsize=8, loc="lower right")
    mins = result["minutes"]
    latency.plot([m["minute"] + 1 for m in mins], [m["offer_p50"] for m in mins], "o-", label="offer p50")
    latency.plot([m["minute"] + 1 for m in mins], [m["offer_p99"] for m in mins], "s-", label="offer p99")
    latency.plot([m["minute"] + 1 for m in mins], [m["assigned_p99"] for m in mins], "^--", label="accept→assigned p99")
    latency.set_title("Escalation → offer per minute")
    latency.set_ylabel("ms")
    latency.set_ylim(bottom=0)
    for ax in (rss, fds, latency):
        ax.legend(fontsize=8)
    for ax in (rss, conns, fds, latency):
        ax.set_xlabel("minutes")
        ax.grid(alpha=0.3)
    args = result["args"]
    fig.suptitle(f"Soak: {args['agents']} agents, {args['rate']}/s for {args['minutes']} min, one 2-core box")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    print(f"plot: {path.relative_to(ROOT)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--agents", type=int, default=200)
    parser.add_argument("--rate", type=float, default=5, help="escalations per second")
    parser.add_argument("--handle", type=float, nargs=2, default=(2.0, 5.0), help="resolve after U(a, b) s")
    parser.add_argument("--every", type=float, default=10, help="seconds between samples")
    parser.add_argument("--drain", type=float, default=120, help="at most this long for the last work to finish")
    coordinator(parser.parse_args())


if __name__ == "__main__":
    main()
