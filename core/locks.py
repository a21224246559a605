"""Lock helpers the apps share, and the one lock order they all follow.

Row locks, in this order and never the other way round: Conversation (several: in id order), then
Offer, then Agent; then payouts' own: the agent's payouts lock (the advisory lock
`payouts.agent.<agent id>`, not the agent's row, which dispatch locks to offer work), then Earning,
then Transfer, then Reversal. A verb that starts from an agent reads the ids it needs without
locks, then locks in this order (dispatch's `_with_agent_and_work_locked`). No lock is held across
a network call (a socket send, Stripe, a bot's callback URL).
"""

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
