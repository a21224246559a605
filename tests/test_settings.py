"""Production refuses to start without its secrets; the embedded default needs nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROBE = (
    "import django; django.setup(); from django.conf import settings; "
    "print(settings.TASK_RUNNER, settings.DATABASES['default']['ENGINE'])"
)


def load_settings(**env: str) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DATABASE_URL", "REDIS_URL", "SECRET_KEY", "DEBUG", "ALLOWED_HOSTS"}
    }
    return subprocess.run(
        [
            sys.executable,
            "-c",
            PROBE,
        ],
        cwd=ROOT,
        env={**clean, "DJANGO_SETTINGS_MODULE": "config.settings", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_embedded_default_needs_no_server():
    result = load_settings()
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[:2] == ["thread", "django.db.backends.sqlite3"]


@pytest.mark.parametrize(
    ("env", "missing"),
    [
        ({"DEBUG": "false", "ALLOWED_HOSTS": "example.com"}, "SECRET_KEY"),
        ({"DEBUG": "false", "SECRET_KEY": "x" * 50, "ALLOWED_HOSTS": ""}, "ALLOWED_HOSTS"),
        ({"TASK_RUNNER": "celery"}, "REDIS_URL"),
        ({"OFFER_TIMEOUT_SECONDS": "soon"}, "OFFER_TIMEOUT_SECONDS"),
    ],
)
def test_production_refuses_to_start_without_its_settings(env, missing):
    result = load_settings(**env)
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert missing in result.stderr


def test_production_with_its_settings_starts():
    result = load_settings(
        DEBUG="false", SECRET_KEY="x" * 50, ALLOWED_HOSTS="example.com", REDIS_URL="redis://127.0.0.1:6379/15"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[0] == "celery"
