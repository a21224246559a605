"""Queueing: the real dispatcher against Erlang C (M/M/c, FIFO, work-conserving).

c agents with capacity 1 connect over WebSockets (two Daphne processes, Celery
workers and beat, PostgreSQL, Redis: the processes of bench/dispatch_latency.py).
A bot posts signed escalations as a Poisson process of rate lambda = rho * c * mu;
each agent accepts every offer at once and resolves an exponential handle time
(mean 1/mu) after the offer reached it, so its occupancy, offer to release, is
the exponential service time of the model. Accelerated time: a mean handle time
of 4 s stands for minutes of real work; waits scale with it.

The queue starts in its stationary state: before the Poisson arrivals, the bot
posts n0 escalations at once, n0 drawn from Erlang C's stationary distribution
of the number in system, so no warm-up bias. Only the Poisson arrivals count.

From the database (one clock for every process) per conversation:

  wait        created_at -> the offer's created_at (the agent is taken: service starts)
  raw wait    created_at -> assigned_at (the customer's view: + the accept round trip)
  occupancy   the offer's created_at -> resolved_at (the agent's slot is free again)

Printed per utilisation: Erlang C's P(wait) and W_q against the measured ones
(95 % confidence intervals from batch means), and, because a mean wait near
rho = 1 is too noisy to pin down in minutes (the sample size needed is printed),
a paired comparison: the same arrivals and handle times replayed through an
ideal FIFO work-conserving c-server queue. The difference measured - ideal
has a small variance and is the dispatcher's own cost; Erlang C + that
difference estimates the dispatcher's long-run mean wait. Work conservation:
the time integral of min(waiting customers, idle agents), per customer, is the
excess wait from agents idle beside a waiting customer; FIFO: offers that
overtook an older waiting conversation.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres REDIS_URL=redis://127.0.0.1:6379/7 \\
        .venv/bin/python bench/queueing.py --rho 0.85 0.95 --duration 180 300 --handle 4

It creates (and drops) its own database `bench_queueing` and flushes the Redis
database it is given. Logs go to var/bench/queueing/, results (JSON) next to
them, the plot to docs/img/queueing.png (`--plot-only` redraws it).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import heapq
import json
import math
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.dispatch_latency import Lines, agents_role, bench_env, bot_role, percentile, prepare_database  # noqa: E402

LOGS = ROOT / "var" / "bench" / "queueing"
PLOT = ROOT / "docs" / "img" / "queueing.png"

# --- the model ----------------------------------------------------------------------------


def erlang_c(c: int, lam: float, mu: float) -> tuple[float, float]:
    """P(wait) and the mean wait W_q of M/M/c (FIFO), lambda < c * mu."""
    a = lam / mu
    rho = a / c
    term, head = 1.0, 0.0  # a^k / k!, summed for k < c
    for k in range(c):
        head += term
        term *= a / (k + 1)
    tail = term / (1 - rho)  # a^c / c! / (1 - rho)
    p_wait = tail / (head + tail)
    return p_wait, p_wait / (c * mu - lam)


def stationary_in_system(c: int, lam: float, mu: float, rng: random.Random) -> int:
    """A draw of the number in system of a stationary M/M/c."""
    a, weights, term = lam / mu, [], 1.0
    for n in range(c + 2000):
        weights.append(term)
        term *= a / (n + 1) if n < c else a / c
    return rng.choices(range(len(weights)), weights=weights)[0]


def fifo_replay(arrivals: list[float], services: list[float], c: int) -> list[float]:
    """Waits in an ideal FIFO, work-conserving queue with c servers (arrivals sorted)."""
    free = [-math.inf] * c
    waits = []
    for arrival, service in zip(arrivals, services, strict=True):
        start = max(heapq.heappop(free), arrival)
        waits.append(start - arrival)
        heapq.heappush(free, start + service)
    return waits


T_975 = {4: 2.776, 9: 2.262, 14: 2.145, 19: 2.093, 29: 2.045}


def batch_means(values: list[float], batches: int = 10) -> tuple[float, float]:
    """The mean and the half-width of its 95 % confidence interval (batch means, in order)."""
    size = len(values) // batches
    means = [statistics.fmean(values[i * size : (i + 1) * size]) for i in range(batches)]
    return statistics.fmean(values), T_975[batches - 1] * statistics.stdev(means) / math.sqrt(batches)


def samples_needed(c: int, lam: float, mu: float, precision: float, runs: int = 100, seed: int = 7) -> float:
    """Customers needed for a 95 % interval of +-precision on W_q (simulated, stationary start)."""
    rng = random.Random(seed)
    n = 10_000
    _, wq = erlang_c(c, lam, mu)
    means = []
    for _ in range(runs):
        t, arrivals = 0.0, [0.0] * stationary_in_system(c, lam, mu, rng)
        for _ in range(n):
            t += rng.expovariate(lam)
            arrivals.append(t)
        waits = fifo_replay(arrivals, [rng.expovariate(mu) for _ in arrivals], c)
        means.append(statistics.fmean(waits[len(arrivals) - n :]))
    relative_sd = statistics.stdev(means) / wq
    return n * (1.96 * relative_sd / precision) ** 2


# --- one run against the real dispatcher -----------------------------------------------------


def run_point(args: argparse.Namespace, rho: float, duration: float, seed: int) -> dict[str, Any]:
    from django.db import connections

    from tests.processes import celery_beat, celery_worker, daphne

    connections.close_all()
    prepare_database(args.server, "bench_queueing")
    redis_url = os.environ["REDIS_URL"]
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, check=True)
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    from marketplace import services

    c, mu = args.agents, 1 / args.handle
    lam = rho * c * mu
    rng = random.Random(seed)
    burst = stationary_in_system(c, lam, mu, rng)
    integration = services.integration_create(
        data=services.IntegrationInput(name="bench", callback_url="http://127.0.0.1:9/discard")
    )
    template = services.AgentInput("", "bench-pass-123", ["en"], ["billing"], 1)
    tokens = [token for _, token in services.agents_create_bulk(prefix="q", count=c, template=template)]

    LOGS.mkdir(parents=True, exist_ok=True)
    env = bench_env(
        CALLBACK_MAX_ATTEMPTS="1",
        BOT_RATE_LIMIT_PER_MINUTE="1000000",  # the bot's rate must not be throttled
        ADMISSION_CONTROL="false",  # the queue against Erlang C: every arrival joins it, none is shed
        OFFER_TIMEOUT_SECONDS="20",  # agents accept at once; no offer expires
    )
    me = [sys.executable, str(Path(__file__).resolve())]
    with ExitStack() as stack:
        stack.enter_context(celery_worker(env, LOGS / "worker.log", concurrency=8, queues="celery"))
        stack.enter_context(celery_worker(env, LOGS / "callbacks.log", concurrency=8, queues="callbacks,payouts"))
        stack.enter_context(celery_beat(env, LOGS / "beat.log", LOGS))
        bases = [stack.enter_context(daphne(env, LOGS / f"daphne-{n}.log")) for n in (1, 2)]
        agent_procs = []
        for n, base in enumerate(bases):
            proc = subprocess.Popen(
                [*me, "--role", "agents", "--base", base, "--handle", str(args.handle), "--seed", str(seed + n)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                cwd=ROOT,
            )
            assert proc.stdin is not None
            proc.stdin.write("\n".join(tokens[n :: len(bases)]))
            proc.stdin.close()
            agent_procs.append(proc)
        for proc in agent_procs:
            assert proc.stdout is not None
            while (event := json.loads(proc.stdout.readline() or '{"kind": "eof"}'))["kind"] != "ready":
                if event["kind"] in ("eof", "ended"):
                    raise SystemExit(f"agents could not get online: {event}")
        # Read the agents' events as they come: a full pipe (64 KiB, ~180 conversations) would block them.
        agent_lines = [Lines(proc.stdout) for proc in agent_procs]
        load_before = os.getloadavg()
        print(
            f"rho={rho}: {c} agents online; {burst} escalations at once, then Poisson {lam:.3f}/s for {duration:.0f} s"
        )
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
                str(lam),
                "--seconds",
                str(duration),
                "--burst",
                str(burst),
                "--seed",
                str(seed),
            ],  # fmt: skip
            capture_output=True,
            text=True,
            cwd=ROOT,
            check=True,
        )
        deadline = time.monotonic() + 120  # the queue drains
        while time.monotonic() < deadline and not drained():
            time.sleep(0.5)
        time.sleep(1)
        for proc in agent_procs:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
        for lines in agent_lines:
            lines.thread.join(timeout=30)
        agent_events = [event for lines in agent_lines for event in lines.items]
    events = [json.loads(line) for line in bot.stdout.splitlines() if line.startswith("{")]
    posted = [e for e in events if e["kind"] == "posted"]
    result = analyse(rho, c, lam, mu, duration, posted, agent_events, collect())
    result["load_average"] = [load_before, os.getloadavg()]  # the machine is shared: say how busy it was
    return result


def drained() -> bool:
    from marketplace.models import Conversation

    return not Conversation.objects.filter(
        status__in=(Conversation.Status.QUEUED, Conversation.Status.OFFERED, Conversation.Status.ASSIGNED)
    ).exists()


def collect() -> list[dict[str, Any]]:
    """Per conversation: its times (epoch seconds), its agent, and its offers."""
    from dispatch.models import Offer
    from marketplace.models import Conversation

    offers: dict[str, list[tuple[float, str, str]]] = {}
    for conversation_id, created, agent_id, state in Offer.objects.values_list(
        "conversation_id", "created_at", "agent_id", "state"
    ):
        offers.setdefault(conversation_id, []).append((created.timestamp(), agent_id, state))
    rows = []
    for cid, created, assigned, resolved, agent_id, status in Conversation.objects.values_list(
        "id", "created_at", "assigned_at", "resolved_at", "assigned_agent_id", "status"
    ):
        accepted = [o for o in offers.get(cid, []) if o[2] == Offer.State.ACCEPTED]
        rows.append(
            {
                "id": cid,
                "status": status,
                "created": created.timestamp(),
                "offered": accepted[0][0] if accepted else None,
                "assigned": assigned.timestamp() if assigned else None,
                "resolved": resolved.timestamp() if resolved else None,
                "agent": agent_id,
                "offers": len(offers.get(cid, [])),
            }
        )
    return sorted(rows, key=lambda r: r["created"])


# --- analysis ------------------------------------------------------------------------------


def analyse(
    rho: float,
    c: int,
    lam: float,
    mu: float,
    duration: float,
    posted: list[dict[str, Any]],
    agent_events: list[dict[str, Any]],
    rows: list[dict[str, Any]],
) -> dict[str, Any]:
    burst_ids = {p["conversation_id"] for p in posted if p.get("burst")}
    handle = {e["conversation_id"]: e["handle"] for e in agent_events if e["kind"] == "resolve"}
    complete = [r for r in rows if r["offered"] and r["resolved"] and r["id"] in handle]
    problems = {
        "not_posted": sum(1 for p in posted if not p["conversation_id"]),
        "incomplete": len(rows) - len(complete),
        "offers_not_accepted": sum(r["offers"] - (1 if r["offered"] else 0) for r in rows),
        "agent_errors": sum(1 for e in agent_events if e["kind"] == "error"),
    }
    measured = [r for r in complete if r["id"] not in burst_ids]
    t0 = min(r["created"] for r in complete)
    arrivals = [r["created"] - t0 for r in complete]

    wait = [r["offered"] - r["created"] for r in measured]
    raw = [r["assigned"] - r["created"] for r in measured]
    accept = [r["assigned"] - r["offered"] for r in measured]
    occupancy = [r["resolved"] - r["offered"] for r in complete]
    # The ideal queue, fed the same arrivals with (a) the agents' handle times, (b) the measured occupancies.
    ids = [r["id"] for r in complete]
    ideal_handle = dict(zip(ids, fifo_replay(arrivals, [handle[i] for i in ids], c), strict=True))
    ideal_occupancy = dict(zip(ids, fifo_replay(arrivals, occupancy, c), strict=True))
    excess = [w - ideal_handle[r["id"]] for w, r in zip(wait, measured, strict=True)]
    excess_gaps = [w - ideal_occupancy[r["id"]] for w, r in zip(wait, measured, strict=True)]

    span = measured[-1]["created"] - measured[0]["created"]
    lam_hat = (len(measured) - 1) / span
    mu_hat = 1 / statistics.fmean(handle[r["id"]] for r in complete)
    mu_occ = 1 / statistics.fmean(occupancy)
    p_wait, wq = erlang_c(c, lam, mu)
    p_wait_hat, wq_hat = erlang_c(c, lam_hat, mu_occ) if lam_hat < c * mu_occ else (1.0, math.inf)
    wait_mean, wait_hw = batch_means(wait)
    raw_mean, raw_hw = batch_means(raw)
    excess_mean, excess_hw = batch_means(excess)
    gaps_mean, gaps_hw = batch_means(excess_gaps)
    ideal_mean, ideal_hw = batch_means([ideal_handle[r["id"]] for r in measured])
    threshold = 0.1  # waited longer than a dispatch job's latency
    result = {
        "rho": rho,
        "c": c,
        "lam": lam,
        "mu": mu,
        "duration": duration,
        "burst": len(burst_ids),
        "samples": len(measured),
        "problems": problems,
        "lam_hat": lam_hat,
        "mu_hat": mu_hat,
        "mu_occupancy": mu_occ,
        "p_wait": p_wait,
        "wq": wq,
        "p_wait_measured": sum(1 for r in measured if ideal_handle[r["id"]] > 0) / len(measured),
        "p_wait_slow": sum(1 for w in wait if w > threshold) / len(wait),
        "wait": [wait_mean, wait_hw],
        "raw": [raw_mean, raw_hw],
        "accept": [statistics.fmean(accept), percentile(accept, 50), percentile(accept, 99)],
        "ideal": [ideal_mean, ideal_hw],
        "excess": [excess_mean, excess_hw],
        "excess_gaps": [gaps_mean, gaps_hw],
        "erlang_at_measured": [p_wait_hat, wq_hat],
        "occupancy_overhead": statistics.fmean(occupancy) - statistics.fmean(handle[r["id"]] for r in complete),
        "samples_needed_10pct": samples_needed(c, lam, mu, 0.05),
        "conservation": conservation(complete, measured, c),
        "waits": {"wait": wait, "raw": raw, "ideal": [ideal_handle[r["id"]] for r in measured]},
    }
    return result


def conservation(complete: list[dict[str, Any]], measured: list[dict[str, Any]], c: int) -> dict[str, Any]:
    """Agents idle while customers wait, from the database's event times.

    An agent is busy from its offer's creation to the conversation's release; a
    customer waits from creation to its offer. The integral of
    min(waiting, idle) over time, divided by the customers, is the excess mean
    wait from idle agents beside a waiting customer (first order). Also: offers
    that overtook an older waiting conversation (FIFO).
    """
    events: list[tuple[float, int, int]] = []  # (time, d_waiting, d_idle)
    for r in complete:
        events += [(r["created"], 1, 0), (r["offered"], -1, -1), (r["resolved"], 0, 1)]
    events.sort()
    waiting, idle = 0, c
    start, end = measured[0]["created"], measured[-1]["created"]
    area, episodes, episode_start = 0.0, [], None
    had_to_wait = []  # per arrival in the window: no agent to spare for it (the model's "waits")
    previous = events[0][0]
    for t, d_waiting, d_idle in events:
        if d_waiting == 1 and start <= t <= end:
            had_to_wait.append(waiting >= idle)
        both = min(waiting, idle)
        if both > 0:
            area += both * (max(min(t, end), start) - max(min(previous, end), start))
        waiting += d_waiting
        idle += d_idle
        now_both = min(waiting, idle) > 0
        if now_both and episode_start is None:
            episode_start = t
        elif not now_both and episode_start is not None:
            if start <= episode_start <= end:
                episodes.append(t - episode_start)
            episode_start = None
        previous = t
    # FIFO: at each offer, was an older conversation still waiting?
    by_created = sorted(complete, key=lambda r: r["created"])
    created = [r["created"] for r in by_created]
    overtakes, overtaken = 0, []
    for r in measured:
        i = bisect.bisect_left(created, r["created"])
        # only the last few hundred can still be waiting; scan those
        late = [o for o in by_created[max(0, i - 400) : i] if o["offered"] > r["offered"]]
        if late:
            overtakes += 1
            overtaken.append(max(o["offered"] - r["offered"] for o in late))
    long = [e for e in episodes if e > 0.25]
    return {
        "p_wait": sum(had_to_wait) / len(had_to_wait),
        "idle_while_waiting_seconds": area,
        "excess_per_customer": area / len(measured),
        "episodes": len(episodes),
        "episode_p50": percentile(episodes, 50),
        "episode_p99": percentile(episodes, 99),
        "episode_max": max(episodes, default=0.0),
        "episodes_over_250ms": len(long),
        "overtakes": overtakes,
        "overtake_max": max(overtaken, default=0.0),
    }


# --- report and plot ---------------------------------------------------------------------


def report(r: dict[str, Any]) -> None:
    cons, ms, wq = r["conservation"], 1000, r["wq"]
    lines = [
        f"rho={r['rho']} c={r['c']} lambda={r['lam']:.3f}/s mu={r['mu']:.3f}/s  samples={r['samples']} "
        f"(+{r['burst']} at the start, not counted)  problems={r['problems']}",
        f"  realised: lambda={r['lam_hat']:.3f}/s, handle mean {1 / r['mu_hat']:.3f} s, occupancy mean "
        f"{1 / r['mu_occupancy']:.3f} s (+{r['occupancy_overhead'] * ms:.0f} ms)",
        f"  P(wait)  Erlang C {r['p_wait']:.3f}   ideal replay {r['p_wait_measured']:.3f}   measured "
        f"{cons['p_wait']:.3f} (no agent to spare on arrival; waited > 100 ms: {r['p_wait_slow']:.3f})",
        f"  W_q Erlang C             {wq:.3f} s   (at the realised lambda and occupancy: "
        f"{r['erlang_at_measured'][1]:.3f} s)",
        f"  W_q ideal replay         {r['ideal'][0]:.3f} +- {r['ideal'][1]:.3f} s  (same arrivals and handle times)",
        f"  W_q measured (to offer)  {r['wait'][0]:.3f} +- {r['wait'][1]:.3f} s  "
        f"({100 * (r['wait'][0] / wq - 1):+.1f} % vs Erlang C)",
        f"  raw wait (to assigned)   {r['raw'][0]:.3f} +- {r['raw'][1]:.3f} s  (accept round trip mean "
        f"{r['accept'][0] * ms:.1f} ms, p99 {r['accept'][2] * ms:.1f} ms)",
        f"  excess over ideal        {r['excess'][0] * ms:+.1f} +- {r['excess'][1] * ms:.1f} ms  "
        f"({100 * r['excess'][0] / wq:+.1f} % of W_q)",
        f"    of which gaps (given the measured occupancies) {r['excess_gaps'][0] * ms:+.1f} "
        f"+- {r['excess_gaps'][1] * ms:.1f} ms",
        f"  dispatcher's W_q (Erlang C + excess) {wq + r['excess'][0]:.3f} +- {r['excess'][1]:.3f} s "
        f"({100 * r['excess'][0] / wq:+.1f} %)",
        f"  work conservation: {cons['idle_while_waiting_seconds']:.1f} agent-s idle beside a waiting customer "
        f"= {cons['excess_per_customer'] * ms:.1f} ms per customer; {cons['episodes']} episodes, "
        f"p50 {cons['episode_p50'] * ms:.1f} ms, p99 {cons['episode_p99'] * ms:.1f} ms, "
        f"max {cons['episode_max'] * ms:.0f} ms, {cons['episodes_over_250ms']} over 250 ms",
        f"  FIFO: {cons['overtakes']} offers overtook an older waiting conversation "
        f"(which then waited up to {cons['overtake_max'] * ms:.0f} ms longer)",
        f"  customers for a +-5 % interval on W_q (simulated): {r['samples_needed_10pct']:,.0f}",
        "  load average (1, 5, 15 min) before {} after {}".format(
            *("/".join(f"{x:.1f}" for x in load) for load in r.get("load_average", [[0, 0, 0]] * 2))
        ),
    ]
    print("\n" + "\n".join(lines))


def survival(values: list[float], ts: list[float]) -> list[float]:
    ordered = sorted(values)
    return [1 - bisect.bisect_right(ordered, t) / len(ordered) for t in ts]


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.5), squeeze=False)
    for ax, r in zip(axes[0], results, strict=True):
        c, lam, mu = r["c"], r["lam"], r["mu"]
        horizon = 5 / (c * mu - lam)
        ts = [horizon * i / 200 for i in range(201)]

        ax.plot(
            ts, [r["p_wait"] * math.exp(-(c * mu - lam) * t) for t in ts], "k--", label="Erlang C: P_wait e^-(cμ-λ)t"
        )
        ax.plot(
            ts, survival(r["waits"]["ideal"], ts), color="0.6", label="ideal FIFO queue, same arrivals and handle times"
        )
        ax.plot(ts, survival(r["waits"]["wait"], ts), label="measured: created → offer")
        ax.plot(ts, survival(r["waits"]["raw"], ts), label="measured: created → assigned")
        ax.set_yscale("log")
        ax.set_ylim(max(1e-3, 1 / len(r["waits"]["wait"])), 1.05)
        ax.set_xlim(0, horizon)
        ax.set_xlabel("wait t (s, accelerated time; mean handle time %.0f s)" % (1 / mu))
        ax.set_ylabel("P(W > t)")
        ax.set_title(f"ρ = {r['rho']}, c = {c}, λ = {lam:.2f}/s, n = {r['samples']}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


# --- entry point ---------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rho", type=float, nargs="+", default=[0.85, 0.95], help="utilisations")
    parser.add_argument("--duration", type=float, nargs="+", default=[180, 300], help="seconds of arrivals, per rho")
    parser.add_argument("--agents", type=int, default=20, help="c: agents with capacity 1")
    parser.add_argument("--handle", type=float, default=4.0, help="mean handle time 1/mu (s)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--plot-only", action="store_true", help="redraw the plot from the saved results")
    parser.add_argument("--no-plot", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--role", choices=["coordinator", "agents", "bot"], default="coordinator")
    parser.add_argument("--base")
    parser.add_argument("--bases")
    parser.add_argument("--integration")
    parser.add_argument("--secret")
    parser.add_argument("--rate", type=float)
    parser.add_argument("--seconds", type=float)
    parser.add_argument("--burst", type=int, default=0)
    args = parser.parse_args()
    if args.role == "agents":
        signal.signal(signal.SIGTERM, lambda *_: (sys.stdout.flush(), os._exit(0)))
        tokens = [line.strip() for line in sys.stdin if line.strip()]
        rng = random.Random(args.seed)
        mu = 1 / args.handle
        asyncio.run(agents_role(args.base, tokens, lambda: rng.expovariate(mu), from_offer=True))
        return
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings_dev")
    os.environ["CALLBACK_ALLOWED_NETWORKS"] = "127.0.0.0/8"  # the benchmark's callback receivers are on loopback
    if args.role == "bot":
        bot_role(
            args.bases.split(","),
            args.integration,
            args.secret,
            args.rate,
            args.seconds,
            poisson=True,
            burst=args.burst,
            seed=args.seed,
        )
        return
    saved = [LOGS / f"rho-{rho}.json" for rho in args.rho]
    if not args.plot_only and len(args.rho) > 1:
        # One process per point: the database is dropped in between, and Django's connection
        # pool would keep (killed) connections to the old one.
        for n, (rho, duration) in enumerate(zip(args.rho, args.duration, strict=True)):
            point = ["--rho", str(rho), "--duration", str(duration), "--seed", str(args.seed + 100 * n)]
            common = ["--agents", str(args.agents), "--handle", str(args.handle), "--no-plot"]
            subprocess.run([sys.executable, str(Path(__file__).resolve()), *point, *common], check=True)
    elif not args.plot_only:
        os.environ["LOG_LEVEL"] = "WARNING"
        args.server = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
        parts = urlsplit(args.server)
        os.environ["DATABASE_URL"] = urlunsplit(parts._replace(path="/bench_queueing"))
        os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/7")
        import django

        django.setup()
        result = run_point(args, args.rho[0], args.duration[0], args.seed)
        saved[0].write_text(json.dumps(result))
        report(result)
        if args.no_plot:
            return
    results = [json.loads(path.read_text()) for path in saved]
    if args.plot_only:
        for result in results:
            report(result)
    plot(results, PLOT)
    print(f"\nplot: {PLOT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
