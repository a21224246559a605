"""The web process's garbage-collection policy (core/gc_policy.py): frozen at start-up and at every
heartbeat, no automatic full pass, a deliberate one after enough socket closes or enough time, and
the cyclic garbage of closed sockets reclaimed by it (bounded, not left to grow)."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Iterator
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from rest_framework.authtoken.models import Token

from core import gc_policy
from core.gc_policy import GEN2_THRESHOLD_OFF, GcPolicy


@pytest.fixture(autouse=True)
def _gc_state_restored() -> Iterator[None]:
    threshold = gc.get_threshold()
    closes = gc_policy.policy.closes
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)
    gc_policy.policy.closes = closes
    gc.collect()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class SocketState:
    """What a socket leaves behind: objects that refer to each other (a consumer, its tasks, its scope)."""

    def __init__(self) -> None:
        self.me = self
        self.scope: dict[str, Any] = {"consumer": self, "payload": [object() for _ in range(10)]}


def frozen(obj: object) -> bool:
    """Tracked by the collector but in none of its generations: in the permanent one."""
    return gc.is_tracked(obj) and not any(o is obj for o in gc.get_objects())


def test_a_full_pass_is_due_after_500_closes_or_a_tenth_of_the_open_sockets_whichever_is_more():
    policy = GcPolicy(every_closes=500, closed_fraction=0.1, every_seconds=600, clock=Clock())
    assert policy.closes_before_full(100) == 500
    assert policy.closes_before_full(5_000) == 500
    assert policy.closes_before_full(20_000) == 2_000
    for _ in range(499):
        policy.socket_closed()
    assert not policy.due(5_000)
    policy.socket_closed()
    assert policy.due(5_000)
    assert not policy.due(20_000)  # a pass over 20,000 sockets waits for 2,000 closes


def test_install_freezes_what_start_up_made_and_turns_the_automatic_full_pass_off():
    made_at_start_up = SocketState()
    young, middle, _ = gc.get_threshold()
    GcPolicy().install()
    assert gc.get_threshold() == (young, middle, GEN2_THRESHOLD_OFF)
    assert frozen(made_at_start_up)


def test_each_heartbeat_freezes_the_sockets_opened_since_the_last_one():
    policy = GcPolicy(clock=Clock())
    policy.install()
    opened = SocketState()
    assert not frozen(opened)
    assert not policy.tick(open_sockets=1)  # no full pass: nothing was due
    assert frozen(opened)


def test_the_full_pass_runs_at_least_every_gc_full_every_seconds():
    clock = Clock()
    policy = GcPolicy(every_closes=500, every_seconds=600, clock=clock)
    policy.install()
    clock.now += 599
    assert not policy.tick(open_sockets=10)
    clock.now += 1
    assert policy.tick(open_sockets=10)
    assert policy.full_passes == 1
    assert not policy.tick(open_sockets=10)  # the clock starts again from the pass


def test_the_cyclic_garbage_of_closed_sockets_is_reclaimed_once_enough_closed():
    policy = GcPolicy(every_closes=5, closed_fraction=0.1, every_seconds=600, clock=Clock())
    policy.install()
    sockets = [SocketState() for _ in range(5)]
    policy.tick(open_sockets=5)  # a heartbeat while they are open: frozen
    alive = [weakref.ref(s) for s in sockets]
    for _ in range(4):
        sockets.pop()
        policy.socket_closed()
    gc.collect()  # an ordinary full collection does not see frozen objects
    assert sum(ref() is not None for ref in alive) == 5
    assert not policy.tick(open_sockets=1)
    sockets.pop()
    policy.socket_closed()
    assert policy.tick(open_sockets=0)  # the fifth close: the full pass unfreezes and reclaims them
    assert sum(ref() is not None for ref in alive) == 0


def test_the_garbage_held_is_bounded_however_many_sockets_come_and_go():
    """10,000 socket lives, 200 open at a time, a heartbeat every 50 connects: at most about
    every_closes + one heartbeat's worth of dead sockets is ever held."""
    policy = GcPolicy(every_closes=500, closed_fraction=0.1, every_seconds=600, clock=Clock())
    policy.install()
    open_: list[SocketState] = []
    refs: list[weakref.ref[SocketState]] = []
    most_dead_held = 0
    for n in range(10_000):
        state = SocketState()
        open_.append(state)
        refs.append(weakref.ref(state))
        if len(open_) > 200:
            open_.pop(0)
            policy.socket_closed()
        if n % 50 == 0:
            policy.tick(open_sockets=len(open_))
            refs = [r for r in refs if r() is not None]
            most_dead_held = max(most_dead_held, len(refs) - len(open_))
    assert policy.full_passes >= 19
    assert most_dead_held <= 500 + 50


@pytest.mark.django_db(transaction=True)
async def test_the_consumer_counts_its_close_and_the_heartbeat_freezes(make_agent, settings):
    from dispatch import heartbeat

    from .dispatch.conftest import connect

    settings.SERVER_HEARTBEAT_SECONDS = 0.1
    gc_policy.configure(every_closes=500, closed_fraction=0.1, every_seconds=600)
    gc_policy.policy.install()
    assert gc_policy.installed()
    before = gc_policy.policy.closes
    agent = await sync_to_async(make_agent)()
    token, _ = await Token.objects.aget_or_create(user_id=agent.user_id)
    connected, _, socket = await connect(f"/ws/agent/?token={token.key}")
    assert connected
    await socket.expect("hello")
    made_while_open = SocketState()
    for _ in range(50):  # the heartbeat's next beat freezes it
        await asyncio.sleep(0.05)
        if frozen(made_while_open):
            break
    assert frozen(made_while_open)
    await socket.close()
    assert gc_policy.policy.closes == before + 1
    assert not heartbeat._open
