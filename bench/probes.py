"""What the capacity and soak benchmarks measure about the servers, shared by both.

- `raise_nofile`: lift this process's RLIMIT_NOFILE to the hard limit (children inherit it).
- `private_redis`: a redis-server of our own on a free port, so that Redis's INFO
  (connected_clients, used_memory) counts only this benchmark's clients and keys,
  not those of whoever else shares the machine's Redis.
- `server_processes`: the Daphne / Celery worker / beat processes started by this
  process (tests/processes.py helpers), found by their command lines.
- `process_sample`, `redis_sample`, `pg_connections`: one reading each.
"""

from __future__ import annotations

import resource
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psutil


def raise_nofile() -> tuple[tuple[int, int], tuple[int, int]]:
    """Soft limit of open files up to the hard limit; returns (before, after) as (soft, hard)."""
    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    soft, hard = before
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, before[1]))
    return before, resource.getrlimit(resource.RLIMIT_NOFILE)


@contextmanager
def private_redis(port: int) -> Iterator[str]:
    """A throwaway redis-server (no persistence) on `port`; yields its URL (db 0)."""
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--maxclients", "50000"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    import redis

    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start") from None
            time.sleep(0.05)
    client.close()
    try:
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


def server_processes() -> dict[str, psutil.Process]:
    """This process's server children by role: daphne-<port>, worker-<queues>, beat."""
    found: dict[str, psutil.Process] = {}
    for child in psutil.Process().children():
        try:
            cmd = child.cmdline()
        except psutil.NoSuchProcess:
            continue
        text = " ".join(cmd)
        if "daphne" in text and "-p" in cmd:
            found[f"daphne-{cmd[cmd.index('-p') + 1]}"] = child
        elif " worker " in text and "-Q" in cmd:
            found[f"worker-{cmd[cmd.index('-Q') + 1]}"] = child
        elif " beat " in text:
            found["beat"] = child
    return found


def process_sample(process: psutil.Process, uss: bool = False) -> dict[str, Any]:
    """RSS (and USS, which reads smaps: slower) in bytes, open fds, threads, CPU seconds so far."""
    with process.oneshot():
        times = process.cpu_times()
        sample: dict[str, Any] = {
            "rss": process.memory_info().rss,
            "fds": process.num_fds(),
            "threads": process.num_threads(),
            "cpu": times.user + times.system,
        }
    if uss:
        sample["uss"] = process.memory_full_info().uss
    return sample


def redis_sample(url: str) -> dict[str, int]:
    import redis

    client = redis.Redis.from_url(url)
    try:
        clients, memory = client.info("clients"), client.info("memory")
        return {"clients": int(clients["connected_clients"]), "used_memory": int(memory["used_memory"])}
    finally:
        client.close()


def pg_connections(admin_url: str, database: str) -> int:
    """Backends connected to `database` (pg_stat_activity), not counting the one asking."""
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()", [database]
        ).fetchone()
    return int(row[0]) if row else 0
