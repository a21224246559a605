"""Garbage collection in the web process: no full pass over every idle socket at a random moment.

CPython runs a full (generation 2) collection whenever the long-lived objects grew by a quarter:
with 5,000 idle agent sockets (about a million tracked objects) each pass took 0.6-1.2 s on the
event loop's thread, during which no socket was served: ping p99 1,540 ms at 5,000 sockets
(docs/BENCHMARKS.md, issue 13). Here:

- at start-up (`install`, from config/asgi.py) and at every heartbeat of the process (`tick`,
  from dispatch/heartbeat.py) everything alive is frozen (`gc.freeze()`): moved to the permanent
  generation, which no collection scans. The young generations are still collected as usual and
  stay small (what was made since the last beat);
- the automatic full collection is off (its threshold raised out of reach);
- a full collection is run deliberately, at a heartbeat, once enough sockets closed since the last
  one (GC_FULL_EVERY_CLOSES, or GC_FULL_CLOSED_FRACTION of the sockets open, whichever is more: a
  pass costs in proportion to what the process holds), and at least every GC_FULL_EVERY_SECONDS
  whatever happened. It unfreezes first, so the cyclic garbage of closed sockets, frozen while
  they were open, is reclaimed: the garbage held is bounded by those thresholds, not left to grow.

A process with no socket has no heartbeat: a daemon thread runs the time-bound pass there.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

# Generation 2 is collected only when generation 1 was collected this many times (and the
# long-lived objects grew by a quarter): never, in practice. Full passes are ours (`full_pass`).
GEN2_THRESHOLD_OFF = 1_000_000_000


@dataclass
class GcPolicy:
    every_closes: int = 500
    closed_fraction: float = 0.1
    every_seconds: float = 600.0
    clock: Callable[[], float] = time.monotonic
    closes: int = 0
    full_passes: int = 0
    last_full: float = field(default=0.0)
    last_pause: float = 0.0
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    def __post_init__(self) -> None:
        self.last_full = self.clock()

    def install(self) -> None:
        """Start-up: collect what start-up left, freeze the rest, and turn the automatic full pass off."""
        with self._lock:
            gc.collect()
            young, middle, _ = gc.get_threshold()
            gc.set_threshold(young, middle, GEN2_THRESHOLD_OFF)
            gc.freeze()
            self.last_full = self.clock()

    def socket_closed(self) -> None:
        self.closes += 1

    def closes_before_full(self, open_sockets: int) -> int:
        return max(self.every_closes, int(open_sockets * self.closed_fraction))

    def due(self, open_sockets: int) -> bool:
        return (
            self.closes >= self.closes_before_full(open_sockets) or self.clock() - self.last_full >= self.every_seconds
        )

    def tick(self, open_sockets: int) -> bool:
        """A heartbeat: the full pass when due, and freeze what is alive now. True if it collected."""
        with self._lock:
            collected = self.due(open_sockets)
            if collected:
                self.full_pass(open_sockets)
            gc.freeze()
            return collected

    def full_pass(self, open_sockets: int = 0) -> int:
        """Unfreeze, collect everything, freeze again. Returns the number of unreachable objects found."""
        with self._lock:
            started = time.perf_counter()
            gc.unfreeze()
            found = gc.collect()
            gc.freeze()
            self.last_pause = time.perf_counter() - started
            logger.info(
                "full garbage collection: %d unreachable, %.0f ms, after %d socket closes (%d open)",
                found,
                self.last_pause * 1000,
                self.closes,
                open_sockets,
            )
            self.closes = 0
            self.full_passes += 1
            self.last_full = self.clock()
            return found


policy = GcPolicy()
_backstop: threading.Thread | None = None


def configure(*, every_closes: int, closed_fraction: float, every_seconds: float) -> None:
    policy.every_closes, policy.closed_fraction, policy.every_seconds = every_closes, closed_fraction, every_seconds


def install_from_settings() -> None:
    """The web process's start-up (config/asgi.py), when GC_POLICY is on."""
    global _backstop
    from django.conf import settings

    if not settings.GC_POLICY:
        return
    configure(
        every_closes=settings.GC_FULL_EVERY_CLOSES,
        closed_fraction=settings.GC_FULL_CLOSED_FRACTION,
        every_seconds=settings.GC_FULL_EVERY_SECONDS,
    )
    policy.install()
    if _backstop is None:
        _backstop = threading.Thread(target=_time_bound, name="gc-policy", daemon=True)
        _backstop.start()


def installed() -> bool:
    return gc.get_threshold()[2] == GEN2_THRESHOLD_OFF


def socket_closed() -> None:
    if installed():
        policy.socket_closed()


def tick(open_sockets: int) -> bool:
    """Called at every heartbeat of the web process (dispatch/heartbeat.py)."""
    return policy.tick(open_sockets) if installed() else False


def _time_bound() -> None:
    """The full pass at least every `every_seconds`, in a process whose heartbeat does not run."""
    while True:
        time.sleep(max(policy.every_seconds / 2, 1))
        try:
            with policy._lock:
                if installed() and policy.clock() - policy.last_full >= policy.every_seconds:
                    policy.full_pass()
        except Exception:  # never let the backstop die
            logger.exception("the periodic full garbage collection failed")
