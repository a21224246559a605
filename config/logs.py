"""Logging filters (settings.LOGGING).

The periodic sweepers run every second or few: Celery's worker logs each run twice at
INFO ("received", "succeeded") and beat once more ("Sending due task"). A run that did
nothing (returned 0, None or False) is logged at DEBUG instead; one that did something
keeps its INFO line.
"""

from __future__ import annotations

import logging
from typing import Any

_IDLE_RESULTS = {"0", "None", "False", "[]", "{}"}


def _periodic_tasks() -> set[str]:
    from django.conf import settings

    return {str(job["task"]) for job in settings.PERIODIC_JOBS.values()}


class QuietPeriodicJobs(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.INFO or not self._idle_periodic(record):
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)

    @staticmethod
    def _idle_periodic(record: logging.LogRecord) -> bool:
        args: Any = record.args
        if isinstance(args, dict) and args.get("name") in _periodic_tasks():
            if "return_value" in args:  # "Task ... succeeded in ...s: <return value>"
                return str(args["return_value"]) in _IDLE_RESULTS
            return "runtime" not in args  # "Task ... received": nothing done yet
        if isinstance(args, tuple) and record.msg.startswith("Scheduler: Sending due task"):
            return len(args) == 2 and args[1] in _periodic_tasks()  # beat's (entry name, task name)
        return False
