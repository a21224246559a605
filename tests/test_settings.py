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
    result = load_settings(DEBUG="true")  # as `make run` asks
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[:2] == ["thread", "django.db.backends.sqlite3"]


@pytest.mark.parametrize(
    ("env", "missing"),
    [
        ({"DEBUG": "false", "ALLOWED_HOSTS": "example.com"}, "SECRET_KEY"),
        ({"DEBUG": "false", "SECRET_KEY": "x" * 50, "ALLOWED_HOSTS": ""}, "ALLOWED_HOSTS"),
        ({}, "SECRET_KEY"),  # DEBUG unset means production
        ({"DEBUG": "true", "TASK_RUNNER": "celery"}, "REDIS_URL"),
        ({"DEBUG": "true", "OFFER_TIMEOUT_SECONDS": "soon"}, "OFFER_TIMEOUT_SECONDS"),
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


# The production configuration that README's "Production" section documents.
PRODUCTION_ENV = {
    "SECRET_KEY": "Xq7#mT2!vL9@rB4$wN8%kP3^hJ6&fD1*zS5(gC0)yU-e4Rt8Yp2Wq6Za",
    "ALLOWED_HOSTS": "marketplace.example.com",
    "CSRF_TRUSTED_ORIGINS": "https://marketplace.example.com",
    "TRUSTED_PROXIES": "10.0.0.0/8",
    "DATABASE_URL": "postgres://marketplace:secret@127.0.0.1:5432/marketplace",
    "REDIS_URL": "redis://127.0.0.1:6379/15",
}


def test_debug_unset_means_production_without_the_demo_endpoints():
    probe = (
        "import django; django.setup(); from django.conf import settings; from django.urls import resolve; "
        "print(settings.DEBUG, settings.DEMO_ENDPOINTS, settings.SECURE_SSL_REDIRECT, settings.SECURE_HSTS_SECONDS, "
        "settings.SESSION_COOKIE_SECURE, settings.CSRF_COOKIE_SECURE, settings.TRUSTED_PROXIES)"
    )
    clean = {k: v for k, v in os.environ.items() if k not in {"DEBUG", "DEMO_ENDPOINTS", *PRODUCTION_ENV}}
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT,
        env={**clean, **PRODUCTION_ENV, "DJANGO_SETTINGS_MODULE": "config.settings"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "False", "True", "31536000", "True", "True", "['10.0.0.0/8']"]


def test_the_documented_production_configuration_passes_check_deploy_without_a_warning():
    # (the browser tests set DJANGO_ALLOW_ASYNC_UNSAFE in this process; production never does)
    dropped = {"DEBUG", "DEMO_ENDPOINTS", "DJANGO_ALLOW_ASYNC_UNSAFE", *PRODUCTION_ENV}
    clean = {k: v for k, v in os.environ.items() if k not in dropped}
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env={**clean, **PRODUCTION_ENV, "DJANGO_SETTINGS_MODULE": "config.settings"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout, result.stdout + result.stderr


def test_the_development_settings_pass_check_deploy_only_with_warnings():
    """The same check does catch what development turns off (so the test above means something)."""
    clean = {k: v for k, v in os.environ.items() if k not in {"DEBUG", *PRODUCTION_ENV}}
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env={**clean, "DEBUG": "true", "DJANGO_SETTINGS_MODULE": "config.settings"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "security.W018" in result.stderr + result.stdout  # DEBUG on


def test_every_periodic_job_is_a_celery_task_importable_by_its_name():
    """The embedded runner imports each periodic job by its name; Celery beat sends it by the same name."""
    from celery import current_app
    from django.conf import settings
    from django.utils.module_loading import import_string

    import config.celery  # noqa: F401 - the app and its autodiscovered tasks

    current_app.loader.import_default_modules()
    for job in settings.PERIODIC_JOBS.values():
        task = import_string(job["task"])
        assert task.name == job["task"], (task.name, job["task"])
        assert job["task"] in current_app.tasks
