"""The cost of opening and closing an agent socket (issue 13, target 4: a reconnect storm).

The connect's queries (token, agent, connection row, hello) and the close's ran on the process's
one thread for sync code, behind every HTTP request and every other socket's connect: about 40
connects a second per process. They run on a few socket threads of their own, and the connection
row is written in one statement.
"""

from __future__ import annotations

import asyncio
import threading

import pytest
from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.authtoken.models import Token

from dispatch.models import AgentConnection
from dispatch.services import presence

from .conftest import connect

pytestmark = pytest.mark.django_db(transaction=True)


def _count_rows(agent_id: str) -> int:
    return AgentConnection.objects.filter(agent_id=agent_id).count()


async def test_an_agent_connects_and_closes_while_the_database_thread_is_busy(make_agent):
    agent = await sync_to_async(make_agent)(online=False)
    token = await sync_to_async(lambda: Token.objects.create(user=agent.user).key)()
    release = threading.Event()
    busy = asyncio.ensure_future(sync_to_async(release.wait)())  # holds the thread-sensitive (database) thread
    # Read on a thread of its own (closing its database connection after each call).
    off_thread = database_sync_to_async(_count_rows, thread_sensitive=False)
    try:
        connected, code, socket = await connect(f"/ws/agent/?token={token}")
        assert connected, code
        hello = await socket.expect("hello", within=5)
        assert hello["agent"]["id"] == agent.pk
        assert await off_thread(agent.pk) == 1
        await socket.close()
        for _ in range(100):
            if await off_thread(agent.pk) == 0:
                break
            await asyncio.sleep(0.05)
        assert await off_thread(agent.pk) == 0
    finally:
        release.set()
        await busy


def test_the_connection_row_is_written_in_one_statement(make_agent, settings):
    agent = make_agent(online=False)
    with CaptureQueriesContext(connection) as queries:
        presence.connection_open(agent_id=agent.pk, channel_name="chan-1", server_id="web-1")
    writes = [q["sql"] for q in queries.captured_queries if "dispatch_agentconnection" in q["sql"]]
    inserts = [sql for sql in writes if sql.startswith("INSERT")]
    assert len(inserts) == 1 and "ON CONFLICT" in inserts[0], writes
    assert not [sql for sql in writes if sql.startswith(("UPDATE", "SAVEPOINT")) or "FOR UPDATE" in sql], writes

    # The same channel again (a retried connect): still one row, moved to the new process.
    presence.connection_open(agent_id=agent.pk, channel_name="chan-1", server_id="web-2")
    assert list(AgentConnection.objects.values_list("channel_name", "server_id")) == [("chan-1", "web-2")]
