"""Payouts, end to end, with real processes: resolutions in, Stripe transfers out, exactly once.

A Celery worker (threads pool, `celery,callbacks` queues, as the Procfile runs
them) pays resolutions through the real stripe library to the Stripe stand-in
(tests/stripe_standin.py) over HTTP; a Daphne process takes Stripe's webhooks.
This process resolves N conversations through the services as fast as it can
and then waits until every earning is transferred. Printed:

  drain throughput         N resolutions wait in the broker; the workers start and pay them all: transfers/s
  resolution -> paid       at a steady pace (--steady-rate), from the resolution's commit to the transfer paid
  webhook ingest           POST /webhooks/stripe/ (signature check, store once, job queued), p50/p99
  exactly once             Stripe's transfers per earning (must be 1), ledger total (must be 0)

With --fault-rate F a fraction F of transfer requests fails first (a 500, a
hang past the client's timeout, or balance_insufficient followed by
balance.available), and every duplicate webhook is sent twice.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres REDIS_URL=redis://127.0.0.1:6379/13 \\
        .venv/bin/python bench/payouts_throughput.py --conversations 500 --fault-rate 0.2

It creates (and drops) its own database `bench_payouts` and flushes the Redis
database it is given. Server logs go to var/bench/.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from dispatch_latency import prepare_database, summary  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conversations", type=int, default=500)
    parser.add_argument("--agents", type=int, default=50)
    parser.add_argument("--fault-rate", type=float, default=0.0)
    parser.add_argument("--webhooks", type=int, default=500, help="events posted to measure ingest")
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--steady", type=int, default=100, help="resolutions at a steady pace, for latency")
    parser.add_argument("--steady-rate", type=float, default=5.0, help="per second")
    args = parser.parse_args()

    server = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/13")
    os.environ["DATABASE_URL"] = prepare_database(server, "bench_payouts")
    os.environ["REDIS_URL"] = redis_url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings_dev")
    os.environ["LOG_LEVEL"] = "WARNING"
    os.environ["CALLBACK_ALLOWED_NETWORKS"] = "127.0.0.0/8"  # the benchmark's callback receivers are on loopback
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, check=True)

    import django

    django.setup()
    import redis
    import requests
    from django.conf import settings
    from django.db.models import Count

    from dispatch.services import conversations, escalations, offers
    from marketplace import services
    from marketplace.models import Agent
    from payouts.models import ConnectedAccount, Earning, Transfer
    from payouts.selectors import ledger_totals
    from payouts.services.sweeper import payouts_sweep
    from tests.processes import celery_worker, daphne, service_env
    from tests.stripe_standin import serve

    redis.Redis.from_url(redis_url).flushdb()
    standin_gen = serve()
    standin = next(standin_gen)
    stripe_settings: dict[str, str | float] = {
        "STRIPE_SECRET_KEY": "sk_test_bench",
        "STRIPE_API_BASE": standin.base,
        "STRIPE_WEBHOOK_SECRET": standin.webhook_secret,
        "STRIPE_TIMEOUT_SECONDS": 1.0,
        "TRANSFER_RETRY_BASE_SECONDS": 0.2,
        "TRANSFER_RETRY_MAX_SECONDS": 2.0,
        "TRANSFER_LEASE_SECONDS": 5.0,
    }
    for key, value in stripe_settings.items():
        setattr(settings, key, value)
    settings.TASK_RUNNER = "celery"
    stripe_env = {key: str(value) for key, value in stripe_settings.items()}

    integration = services.integration_create(
        data=services.IntegrationInput(name="bench", callback_url="http://127.0.0.1:9/discard")
    )
    template = services.AgentInput("", "bench-pass-123", ["en"], ["billing"], 20)
    services.agents_create_bulk(prefix="payee", count=args.agents, template=template)
    agents = list(Agent.objects.all())
    for agent in agents:  # onboarded and active at Stripe
        account = standin.account_create({"capabilities": {"transfers": {"requested": "true"}}})
        standin.account_activate(account["id"])
        ConnectedAccount.objects.create(agent=agent, stripe_account_id=account["id"], transfers_status="active")
    Agent.objects.update(status=Agent.Status.ONLINE)

    if args.fault_rate:
        count = int((args.conversations + args.steady) * args.fault_rate)
        kinds = [500, ("hang", 1.5), "balance_insufficient"]
        standin.faults["POST /v1/transfers"] = [random.choice(kinds) for _ in range(count)]  # noqa: S311
        random.shuffle(standin.faults["POST /v1/transfers"])

    logs = ROOT / "var" / "bench"
    logs.mkdir(parents=True, exist_ok=True)
    env = service_env(
        DEBUG="false",
        SECRET_KEY="bench-" + "x" * 40,
        ALLOWED_HOSTS="127.0.0.1,localhost",
        SECURE_SSL_REDIRECT="false",  # plain HTTP on loopback, no TLS proxy in front
        LOG_LEVEL="WARNING",
        CALLBACK_MAX_ATTEMPTS="1",
        **stripe_env,
    )

    def resolve(n: int) -> None:
        agent = agents[n % len(agents)]
        conversation, _ = escalations.conversation_escalate(
            integration=integration, data=services.EscalationInput(external_id=f"pay-{n}", language="xx")
        )  # a language nobody speaks: the background dispatcher leaves it to us
        offer = offers.offer_create(conversation_id=conversation.pk, agent_id=agent.pk)
        offers.offer_accept(offer_id=offer.pk, agent=agent)
        conversations.conversation_resolve(conversation_id=conversation.pk, agent=agent, outcome="resolved")

    def wait_paid(count: int, base: str) -> bool:
        deadline = time.monotonic() + args.timeout
        last_kick = 0.0
        while Transfer.objects.filter(state=Transfer.State.PAID).count() < count:
            if time.monotonic() > deadline:
                return False
            if time.monotonic() - last_kick > 2:  # what beat does: the sweeper, and Stripe's balance.available
                payouts_sweep()
                if Transfer.objects.filter(hold_reason="balance_insufficient").exists():
                    standin.emit(f"{base}/webhooks/stripe/", standin.event("balance.available", standin.balance()))
                last_kick = time.monotonic()
            time.sleep(0.05)
        return True

    with ExitStack() as stack:
        base = stack.enter_context(daphne(env, logs / "payouts-daphne.log"))

        # 1. Drain: the resolutions' jobs wait in the broker; then the workers start and pay them all.
        print(f"resolving {args.conversations} conversations (workers stopped) ...", flush=True)
        for n in range(args.conversations):
            resolve(n)
        stack.enter_context(celery_worker(env, logs / "payouts-worker.log", concurrency=8, queues="celery"))
        stack.enter_context(celery_worker(env, logs / "payouts-io.log", concurrency=8, queues="callbacks,payouts"))
        print("workers started; paying ...", flush=True)
        drain_started = time.monotonic()
        wait_paid(args.conversations, base)
        drain_seconds = time.monotonic() - drain_started

        # 2. Latency at a steady pace: resolution committed -> transfer recorded as paid.
        steady_from = time.monotonic()
        for n in range(args.conversations, args.conversations + args.steady):
            resolve(n)
            time.sleep(max(0.0, steady_from + (n - args.conversations + 1) / args.steady_rate - time.monotonic()))
        wait_paid(args.conversations + args.steady, base)

        # Webhook ingest, measured over HTTP against the Daphne process.
        ingest: list[float] = []
        session = requests.Session()
        for n in range(args.webhooks):
            account_id = agents[n % len(agents)].payout_account.stripe_account_id
            event = standin.event("account.updated", standin.accounts[account_id])
            payload = json.dumps(event).encode()
            for _ in range(2 if args.fault_rate else 1):  # duplicates, with faults on
                t0 = time.perf_counter()
                response = session.post(
                    f"{base}/webhooks/stripe/",
                    data=payload,
                    headers={"Content-Type": "application/json", "Stripe-Signature": standin.sign(payload)},
                    timeout=10,
                )
                ingest.append((time.perf_counter() - t0) * 1000)
                assert response.status_code == 200, response.text

    total = args.conversations + args.steady
    paid = Transfer.objects.filter(state=Transfer.State.PAID)
    steady = paid.filter(earning__conversation__external_id__in=[f"pay-{n}" for n in range(args.conversations, total)])
    latencies = [(t.paid_at - t.earning.created_at).total_seconds() * 1000 for t in steady.select_related("earning")]
    per_earning: dict[str, int] = {}
    for transfer in standin.transfers.values():
        per_earning[transfer["metadata"]["earning_id"]] = per_earning.get(transfer["metadata"]["earning_id"], 0) + 1
    duplicates = sum(1 for c in per_earning.values() if c > 1)
    posts = sum(1 for m, p, _, _ in standin.requests_seen if (m, p) == ("POST", "/v1/transfers"))
    print()
    print(f"conversations {args.conversations}, agents {args.agents}, fault rate {args.fault_rate}")
    print(
        f"{'drain throughput':<24} {args.conversations / drain_seconds:7.1f} transfers/s "
        f"({args.conversations} queued resolutions paid in {drain_seconds:.1f} s)"
    )
    print(summary(f"resolution -> paid @{args.steady_rate:g}/s", latencies))
    print(summary("webhook ingest", ingest))
    print(
        f"{'exactly once':<24} earnings {Earning.objects.count()}, paid transfers {paid.count()}, "
        f"Stripe transfers {len(standin.transfers)}, earnings with >1 Stripe transfer {duplicates}, "
        f"transfer POSTs {posts}, ledger totals {ledger_totals()}"
    )
    by_state = dict(Transfer.objects.values_list("state").annotate(n=Count("pk")))
    print(f"{'transfers by state':<24} {by_state}")
    ok = paid.count() == total == len(standin.transfers) and not duplicates
    ok = ok and all(total == 0 for total in ledger_totals().values())
    print("RESULT", "ok" if ok else "FAILED")
    standin_gen.close()
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
