"""Development settings: config.settings with DEBUG on unless the environment says otherwise.

For the test suite (pyproject's DJANGO_SETTINGS_MODULE), mypy's Django plugin and
the benchmarks' own process. Production runs config.settings, where DEBUG unset
means off. The processes that tests start inherit DEBUG=true from here unless they
set it (tests/processes.py `service_env`).
"""

import os

os.environ.setdefault("DEBUG", "true")

from config.settings import *  # noqa: E402,F403
