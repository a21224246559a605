"""Background jobs: one way to start a task, whichever runner is configured.

`TASK_RUNNER=celery` sends the task to Celery workers through the broker.
`TASK_RUNNER=thread` (the embedded default) runs it in a small pool of threads
inside this process, honouring the countdown, so the demo needs no other server.

Tasks never rely on the runner for correctness: each one re-reads its state
from the database, and a periodic sweeper re-starts whatever a lost timer or a
crashed process left behind.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from celery import Task
from django.conf import settings
from django.db import close_old_connections, transaction
from django.utils.module_loading import import_string

logger = logging.getLogger(__name__)


class InProcessRunner:
    """A timer heap served by one scheduler thread and a pool of threads per queue."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, str, Callable[..., Any], tuple[Any, ...]]] = []
        self._cv = threading.Condition()
        self._seq = itertools.count()
        self._pools: dict[str, ThreadPoolExecutor] = {}
        self._thread: threading.Thread | None = None
        self._running = 0

    def submit(
        self, fn: Callable[..., Any], args: tuple[Any, ...], countdown: float = 0, queue: str = "celery"
    ) -> None:
        with self._cv:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="job-timer", daemon=True)
                self._thread.start()
            entry = (time.monotonic() + max(countdown, 0), next(self._seq), queue, fn, args)
            heapq.heappush(self._heap, entry)
            self._cv.notify_all()

    def _pool(self, queue: str) -> ThreadPoolExecutor:
        if queue not in self._pools:
            workers = settings.JOB_THREADS.get(queue, 4)
            self._pools[queue] = ThreadPoolExecutor(workers, thread_name_prefix=f"job-{queue}")
        return self._pools[queue]

    def clear(self) -> None:
        """Forget every job not yet started (used between tests)."""
        with self._cv:
            self._heap.clear()

    def wait_idle(self, timeout: float = 10) -> bool:
        """Wait until no job is running (used between tests); True if idle."""
        with self._cv:
            return self._cv.wait_for(lambda: self._running == 0, timeout)

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._heap or self._heap[0][0] > time.monotonic():
                    timeout = self._heap[0][0] - time.monotonic() if self._heap else None
                    self._cv.wait(timeout)
                _, _, queue, fn, args = heapq.heappop(self._heap)
                self._running += 1
                pool = self._pool(queue)
            pool.submit(self._run, fn, args)

    def _run(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        close_old_connections()
        try:
            fn(*args)
        except Exception:
            logger.exception("background job %s%r failed", getattr(fn, "__name__", fn), args)
        finally:
            close_old_connections()
            with self._cv:
                self._running -= 1
                self._cv.notify_all()


runner = InProcessRunner()


def queue_of(task: Task) -> str:
    return str(settings.CELERY_TASK_ROUTES.get(task.name, {}).get("queue", settings.CELERY_TASK_DEFAULT_QUEUE))


def runs_in_process(task: Task) -> bool:
    """True when `task` runs on this process's job threads rather than through the broker.

    Everything does in the embedded default; under Celery, the tasks named in
    settings.IN_PROCESS_TASKS (dispatch's, whose sweepers on the workers are their backstop).
    """
    return settings.TASK_RUNNER != "celery" or task.name in settings.IN_PROCESS_TASKS


def enqueue(task: Task, *args: Any, countdown: float = 0) -> None:
    """Start `task(*args)` after `countdown` seconds on the configured runner.

    Never raises: what was committed stays committed, and the periodic sweepers
    start whatever could not be sent now (a broker outage, say).
    """
    try:
        if not runs_in_process(task):
            task.apply_async(args=args, countdown=countdown or None)
        else:
            runner.submit(task.run, args, countdown, queue_of(task))
    except Exception:
        logger.exception("could not start %s%r; the sweeper will", task.name, args)


def enqueue_on_commit(task: Task, *args: Any, countdown: float = 0) -> None:
    """Start the task once the current transaction commits (never before)."""
    transaction.on_commit(lambda: enqueue(task, *args, countdown=countdown), robust=True)


def start_periodic_jobs() -> None:
    """Run settings.PERIODIC_JOBS in-process, as celery beat does in production."""
    for job in settings.PERIODIC_JOBS.values():
        _schedule_every(import_string(str(job["task"])), float(str(job["seconds"])))


def _schedule_every(task: Task, seconds: float) -> None:
    def tick() -> None:
        try:
            task.run()
        finally:
            runner.submit(tick, (), seconds)

    tick.__name__ = f"every_{seconds}s_{task.name}"
    runner.submit(tick, (), seconds)
