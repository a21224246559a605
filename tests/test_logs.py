"""Logs say each thing once, and idle sweepers say nothing at INFO (issue 11.12)."""

from __future__ import annotations

import logging
import time
from datetime import timedelta

import pytest
import requests
from celery.app.trace import build_tracer
from django.utils import timezone

from dispatch.models import Offer
from dispatch.tasks import sweep_dispatch, sweep_offers

from .conftest import wait_for
from .processes import celery_beat, celery_worker, daphne, service_env


@pytest.mark.parametrize("debug", ["true", "false"])
def test_each_4xx_is_one_line_in_a_real_daphne_log(tmp_path, debug):
    env = service_env(
        DEBUG=debug,
        SECRET_KEY="logs-test-" + "k7#Qz" * 10,
        ALLOWED_HOSTS="127.0.0.1",
        SECURE_SSL_REDIRECT="false",
        DATABASE_URL=f"sqlite:///{tmp_path / 'logs.sqlite3'}",
        REDIS_URL="",
        CELERY_BROKER_URL="",
        TASK_RUNNER="thread",
        RUN_PERIODIC_IN_PROCESS="false",
    )
    log = tmp_path / "daphne.log"
    with daphne(env, log) as base:
        assert requests.get(f"{base}/api/v1/nothing", timeout=5).status_code == 404
        assert requests.get(f"{base}/api/v1/agent/me", timeout=5).status_code == 401
        assert requests.post(f"{base}/api/v1/escalations", json={}, timeout=5).status_code == 401
        time.sleep(0.5)
    logged = log.read_text()
    for path in ("/api/v1/nothing", "/api/v1/agent/me", "/api/v1/escalations"):
        assert logged.count(path) == 1, logged


def run_as_the_worker_does(task: object) -> None:
    """Celery's worker runs a task through build_tracer, which logs its success at INFO."""
    tracer = build_tracer(task.name, task, eager=False, app=task.app)  # type: ignore[attr-defined]
    tracer("task-id-1", (), {}, {})


@pytest.mark.django_db(transaction=True)
def test_an_idle_sweeper_run_is_not_logged_at_info(caplog):
    caplog.set_level(logging.INFO)
    run_as_the_worker_does(sweep_offers)
    run_as_the_worker_does(sweep_dispatch)
    # and: the worker's "received" line and beat's "Sending due task" line for them
    context = {"id": "task-id-2", "name": sweep_offers.name, "args": "()", "kwargs": "{}", "eta": None}
    logging.getLogger("celery.worker.strategy").info("Task %(name)s[%(id)s] received", context)
    logging.getLogger("celery.beat").info("Scheduler: Sending due task %s (%s)", "offers-sweep", sweep_offers.name)

    assert [r for r in caplog.records if r.levelno >= logging.INFO and "sweep" in r.getMessage()] == []


@pytest.mark.django_db(transaction=True)
def test_a_sweeper_run_that_did_something_keeps_its_info_line(caplog, escalate, make_agent, recorded_jobs):
    # given: an offer whose timer was lost
    make_agent()
    escalate(language="en", topic="billing")
    recorded_jobs.run("dispatch_conversation")
    Offer.objects.update(expires_at=timezone.now() - timedelta(seconds=5))
    recorded_jobs.clear()
    caplog.set_level(logging.INFO)

    run_as_the_worker_does(sweep_offers)

    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO and "sweep_offers" in r.getMessage()]
    assert len(lines) == 1 and lines[0].endswith(": 1"), lines


def test_other_tasks_keep_their_info_lines(caplog):
    caplog.set_level(logging.INFO)
    context = {"id": "task-id-3", "name": "marketplace.tasks.deliver_callbacks", "args": "()", "kwargs": "{}"}
    logging.getLogger("celery.worker.strategy").info("Task %(name)s[%(id)s] received", context)
    assert len([r for r in caplog.records if r.levelno == logging.INFO]) == 1


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_a_production_worker_and_beat_log_only_the_sweeps_that_did_something(
    tmp_path, escalate, make_agent, recorded_jobs
):
    """The real processes, as the Procfile runs them (--loglevel=info), with every sweeper each second."""
    # given: one offer whose timer was lost, for the offers sweeper to expire
    make_agent()
    escalate(language="en", topic="billing")
    recorded_jobs.run("dispatch_conversation")
    Offer.objects.update(expires_at=timezone.now() - timedelta(seconds=5))
    recorded_jobs.clear()
    fast = {f"{name}_SWEEP_SECONDS": "1" for name in ("CALLBACK", "OFFER", "DISPATCH", "PRESENCE", "PAYOUT")}
    env = service_env(QUEUE_UPDATE_SECONDS="1", **fast)
    worker_log, beat_log = tmp_path / "worker.log", tmp_path / "beat.log"

    with celery_worker(env, worker_log), celery_beat(env, beat_log, tmp_path):
        wait_for(lambda: Offer.objects.filter(state=Offer.State.EXPIRED).exists(), timeout=60)
        time.sleep(5)  # several idle runs of every sweeper

    logged = (worker_log.read_text() + beat_log.read_text()).splitlines()
    sweeps = [line for line in logged if "INFO" in line and ("sweep" in line or "push_queue_updates" in line)]
    # then: the run that expired the offer is there, and no idle run
    assert any("sweep_offers" in line and line.endswith(": 1") for line in sweeps), "\n".join(logged[-30:])
    idle = [line for line in sweeps if line.endswith((": 0", ": None", ": False")) or "received" in line]
    assert idle == [], "\n".join(idle[:10])
    assert not any("Sending due task" in line for line in sweeps)
