"""Django's PostgreSQL backend, with a connection pool that survives dropped connections.

With CONN_HEALTH_CHECKS on, Django gives psycopg_pool `check=check_connection`: a
connection is tried before it is handed out, and one that died while idle is
replaced. But when the database drops them all at once (a restart, a failover,
pg_terminate_backend), every idle connection in the pool is dead, and psycopg_pool
backs off exponentially between failed checks (1 s, 2 s, 4 s...): a request that
draws four dead connections in a row waits 7 s, and five or more exhaust
DB_POOL_TIMEOUT. So the first failed check tests the whole pool at once
(`ConnectionPool.check()`, as psycopg's maintainers advise after a disconnection):
the dead ones are replaced together and the request gets a live one at once.
"""

from __future__ import annotations

import logging
from typing import Any

from django.db.backends.postgresql import base
from psycopg_pool import ConnectionPool

logger = logging.getLogger(__name__)


def _purging_check(pool: ConnectionPool) -> Any:
    def check(conn: Any) -> None:
        try:
            ConnectionPool.check_connection(conn)
        except Exception:
            logger.warning("a pooled database connection was dead: checking every idle one")
            pool.check()  # the idle ones: replaced now if dead, not drawn one by one
            raise  # this one is discarded; getconn takes the next

    return check


class DatabaseWrapper(base.DatabaseWrapper):
    @property
    def pool(self) -> ConnectionPool | None:
        pool: ConnectionPool | None = super().pool
        # Django sets check=ConnectionPool.check_connection when CONN_HEALTH_CHECKS is on.
        if pool is not None and getattr(pool, "_check", None) is ConnectionPool.check_connection:
            pool._check = _purging_check(pool)
        return pool
