"""Issue 13.3: a surge of new escalations cannot queue in front of the agents (core/edge.py, IntakeLimitMiddleware).

A real Daphne on PostgreSQL and Redis lets at most INTAKE_MAX_IN_FLIGHT new escalations
into Django at once; the others get a 503 with Retry-After at the edge, and nothing is
stored for them. Calls about existing conversations are never refused there.
"""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from asgiref.testing import ApplicationCommunicator

from core import edge
from marketplace import signing
from marketplace.models import Conversation

from .processes import daphne, service_env

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.django_db(transaction=True)]


def signed_post(session: requests.Session, base: str, integration, path: str, payload: dict) -> requests.Response:
    body = json.dumps(payload).encode()
    headers = {
        "Content-Type": "application/json",
        "X-Bot-Id": integration.id,
        "X-Bot-Signature": signing.request_header(integration.secret, "POST", path, body),
    }
    return session.post(base + path, data=body, headers=headers, timeout=30)


def test_a_surge_beyond_the_intake_limit_is_503_with_retry_after_and_nothing_of_it_is_stored(
    make_integration, tmp_path
):
    integration = make_integration()
    env = service_env(
        INTAKE_MAX_IN_FLIGHT="1",
        INTAKE_MAX_WAITING="0",
        INTAKE_RETRY_AFTER_SECONDS="2",
        BOT_RATE_LIMIT_PER_MINUTE="100000",
    )
    with daphne(env, tmp_path / "daphne.log") as base:
        first = signed_post(requests.Session(), base, integration, "/api/v1/escalations", {"external_id": "s-0"})
        assert first.status_code == 201, first.text

        def escalate(n: int) -> requests.Response:
            return signed_post(requests.Session(), base, integration, "/api/v1/escalations", {"external_id": f"s-{n}"})

        with ThreadPoolExecutor(24) as pool:
            answers = list(pool.map(escalate, range(1, 49)))
        statuses = [answer.status_code for answer in answers]
        assert set(statuses) <= {201, 503}, statuses
        refused = [answer for answer in answers if answer.status_code == 503]
        assert refused, "48 escalations at once through one slot: some must have been refused"
        for answer in refused:
            assert answer.headers["Retry-After"] == "2"
            error = answer.json()["error"]
            assert (error["code"], error["retry_after_seconds"]) == ("overloaded", 2)
        # nothing of a refused escalation is stored; every accepted one is, once
        stored = set(Conversation.objects.values_list("external_id", flat=True))
        assert stored == {"s-0"} | {f"s-{n}" for n, answer in enumerate(answers, 1) if answer.status_code == 201}

        # a refused escalation sent again later is an ordinary first request
        again = escalate(answers.index(refused[0]) + 1)
        assert again.status_code == 201, again.text

        # calls about existing conversations are never refused at the edge, even all at once
        def message(n: int) -> requests.Response:
            path = f"/api/v1/escalations/{first.json()['id']}/messages"
            return signed_post(requests.Session(), base, integration, path, {"text": f"hello {n}"})

        with ThreadPoolExecutor(24) as pool:
            assert {answer.status_code for answer in pool.map(message, range(24))} == {201}


async def test_the_limit_counts_only_new_escalations_and_frees_its_slot_when_the_answer_is_sent(settings):
    settings.INTAKE_MAX_IN_FLIGHT = 1
    settings.INTAKE_MAX_WAITING = 0
    settings.INTAKE_RETRY_AFTER_SECONDS = 1
    release = asyncio.Event()

    async def app(scope, receive, send):  # stands for Django: answers when told to
        await release.wait()
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    limited = edge.IntakeLimitMiddleware(app)

    def scope(method: str, path: str) -> dict:
        return {"type": "http", "method": method, "path": path, "headers": [], "query_string": b""}

    held = ApplicationCommunicator(limited, scope("POST", "/api/v1/escalations"))
    await held.send_input({"type": "http.request", "body": b"{}"})
    refused = ApplicationCommunicator(limited, scope("POST", "/api/v1/escalations"))
    start = await refused.receive_output(timeout=2)
    assert start["status"] == 503 and (b"retry-after", b"1") in start["headers"]
    # another path, or a GET, is not counted and not refused
    for other in (scope("POST", "/api/v1/escalations/conv_1/cancel"), scope("GET", "/api/v1/escalations")):
        passing = ApplicationCommunicator(limited, other)
        release.set()
        assert (await passing.receive_output(timeout=2))["status"] == 201
        release.clear()
    release.set()
    assert (await held.receive_output(timeout=2))["status"] == 201
    await held.wait(timeout=2)
    assert limited.in_flight == 0
    after = ApplicationCommunicator(limited, scope("POST", "/api/v1/escalations"))
    assert (await after.receive_output(timeout=2))["status"] == 201


async def test_a_burst_waits_its_turn_in_order_and_only_a_full_or_slow_line_is_refused(settings):
    settings.INTAKE_MAX_IN_FLIGHT = 1
    settings.INTAKE_MAX_WAITING = 2
    settings.INTAKE_MAX_WAIT_SECONDS = 0.5
    gates: list[asyncio.Event] = []
    served: list[int] = []

    async def app(scope, receive, send):
        gate = asyncio.Event()
        gates.append(gate)
        await gate.wait()
        served.append(scope["n"])
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    limited = edge.IntakeLimitMiddleware(app)

    async def post(n: int) -> ApplicationCommunicator:
        scope = {"type": "http", "method": "POST", "path": "/api/v1/escalations", "headers": [], "n": n}
        communicator = ApplicationCommunicator(limited, scope)
        await communicator.send_input({"type": "http.request", "body": b"{}"})  # starts it
        await asyncio.sleep(0.02)
        return communicator

    first, second, third = await post(1), await post(2), await post(3)  # 1 is in, 2 and 3 wait in line
    assert (len(gates), len(limited.waiters)) == (1, 2)
    fourth = await post(4)
    assert (await fourth.receive_output(timeout=1))["status"] == 503  # the line is full: refused at once

    gates[0].set()  # 1 is answered: its slot goes to 2, the first in line
    assert (await first.receive_output(timeout=1))["status"] == 201
    await asyncio.sleep(0.05)
    assert len(gates) == 2 and limited.in_flight == 1
    start = await third.receive_output(timeout=2)  # 3 waited past INTAKE_MAX_WAIT_SECONDS behind 2
    assert start["status"] == 503
    gates[1].set()
    assert (await second.receive_output(timeout=1))["status"] == 201
    assert served == [1, 2]
    for communicator in (first, second):
        await communicator.receive_output(timeout=1)
        await communicator.wait(timeout=1)
    assert (limited.in_flight, len(limited.waiters)) == (0, 0)
