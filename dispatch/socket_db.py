"""The database work of opening and closing agent sockets, on a few threads of its own.

Channels' `database_sync_to_async` runs every consumer's queries on the process's one thread for
sync code, where every HTTP request of the process also waits its turn: a reconnect storm of
thousands of agents connected at about 40 a second per process, and Daphne refused handshakes
that waited past its 5 s connect timeout (docs/BENCHMARKS.md, issue 13, target 4). The token
lookup, the agent, the connection row and `hello`, and the connection row's close on the way
out, run here instead: SOCKET_DB_THREADS threads, each with its own database connection (from
the pool), apart from the agents' actions (dispatch.consumers._actions) so that a storm of
connects does not hold up the accepts of the agents already connected.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from channels.db import DatabaseSyncToAsync
from django.conf import settings

_threads = ThreadPoolExecutor(settings.SOCKET_DB_THREADS, thread_name_prefix="socket-db")


def off_thread(func: Callable[..., Any]) -> Callable[..., Any]:
    """`func` as a coroutine function run on a socket thread (stale connections closed before and after)."""
    return DatabaseSyncToAsync(func, thread_sensitive=False, executor=_threads)


def close_connections() -> None:
    """Close the database connection of every socket thread (tests: each test starts afresh)."""
    from threading import Barrier

    from django.db import connections

    threads = _threads._max_workers
    barrier = Barrier(threads)

    def close() -> None:
        barrier.wait(timeout=30)  # every thread holds one of these, so each closes its own connection
        connections.close_all()

    for future in [_threads.submit(close) for _ in range(threads)]:
        future.result(timeout=30)
