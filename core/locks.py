"""Lock helpers the apps share."""

from __future__ import annotations

from django.db import connection


def advisory_xact_lock(name: str) -> None:
    """Hold an exclusive lock named `name` until the current transaction ends.

    For work that must be serialised but has no row of its own to lock: locking
    somebody else's row instead (the agent's, for payouts) makes unrelated work on
    that row wait or skip it. PostgreSQL advisory locks; nothing on SQLite, whose
    writers are serialised anyway (and where row locks are no-ops too).
    """
    if connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", [name])
