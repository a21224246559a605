"""Settings, read from the environment (docs/API.md, Configuration; every variable: docs/API_REFERENCE.md).

With nothing set, the embedded default needs no other server: SQLite, the
in-memory channel layer, and background jobs in a thread of the web process.
With DATABASE_URL and REDIS_URL set, the same code runs on PostgreSQL,
channels_redis and Celery workers. Production (DEBUG off) refuses to start
without its secrets.
"""

from __future__ import annotations

import ipaddress
import os
from datetime import timedelta
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    if raw.lower() in {"1", "true", "yes", "on"}:
        return True
    if raw.lower() in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean, got {raw!r}")


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    try:
        return default if raw in (None, "") else int(raw)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} must be an integer, got {raw!r}") from exc


def env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    try:
        return default if raw in (None, "") else float(raw)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} must be a number, got {raw!r}") from exc


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None:
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


# Production fails closed: DEBUG is on only when asked for (`make run`, config.settings_dev).
DEBUG = env_bool("DEBUG", False)

SECRET_KEY = env_str("SECRET_KEY")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY is required when DEBUG is off")
    SECRET_KEY = "django-insecure-development-only-key"  # noqa: S105 - DEBUG only

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]", "testserver"] if DEBUG else [])
if not DEBUG and not ALLOWED_HOSTS:
    raise ImproperlyConfigured("ALLOWED_HOSTS is required when DEBUG is off")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels",
    "django_celery_beat",
    "axes",
    "marketplace",
    "dispatch",
    "payouts",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "csp.middleware.CSPMiddleware",
    # Last: it turns a login refused for too many failures into a 429 page (/app/login, /admin/login).
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "config.urls"
ASGI_APPLICATION = "config.asgi.application"
WSGI_APPLICATION = None

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database -----------------------------------------------------------------
DATABASE_URL = env_str("DATABASE_URL", f"sqlite:///{BASE_DIR / 'db.sqlite3'}")
DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=env_int("DB_CONN_MAX_AGE", 0))}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The embedded default has several threads writing (requests, background
    # jobs); WAL plus IMMEDIATE transactions make SQLite wait instead of failing.
    DATABASES["default"]["OPTIONS"] = {
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    # A file, not the shared in-memory database, so that tests see the same
    # locking as the embedded default (threads wait instead of failing).
    DATABASES["default"]["TEST"] = {"NAME": str(BASE_DIR / ".test-db.sqlite3")}
IS_POSTGRES = DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql"
if IS_POSTGRES and env_bool("DB_POOL", True):
    # Under ASGI every request runs in its own thread, so persistent connections
    # do not help; psycopg's pool does (a new connection costs ~10 ms).
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    # With the pool, Django hands CONN_HEALTH_CHECKS to psycopg_pool as
    # check=ConnectionPool.check_connection: a connection is tried (an empty query)
    # before the pool hands it out, so one that died while idle (a database restart,
    # pg_terminate_backend, a proxy's timeout) is replaced instead of failing a request.
    # ("check" cannot go in OPTIONS["pool"]: Django 5.2 passes check= itself.) Our
    # backend (config/postgresql) then replaces every dead idle connection at once.
    DATABASES["default"]["ENGINE"] = "config.postgresql"
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = env_bool("DB_POOL_CHECK", True)
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": env_int("DB_POOL_MIN_SIZE", 2),
        "max_size": env_int("DB_POOL_MAX_SIZE", 20),
        "timeout": env_float("DB_POOL_TIMEOUT", 10),
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis: channel layer, cache, Celery broker --------------------------------
REDIS_URL = env_str("REDIS_URL")
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                # redis-py 8 changed two defaults that break channels_redis (its issue 422):
                # a 5 s read timeout aborts the layer's blocking BZPOPMIN and kills every
                # consumer, and a pool of at most 100 connections fails at once when a few
                # hundred sockets connect together. No read timeout; a pool sized for the sockets.
                "hosts": [
                    {
                        "address": REDIS_URL,
                        "socket_timeout": None,
                        "max_connections": env_int("CHANNEL_REDIS_MAX_CONNECTIONS", 5000),
                    }
                ],
                "prefix": env_str("CHANNEL_PREFIX", "mkt"),
                "capacity": 1000,
            },
        }
    }
    # One client and one bounded pool per process (core/cache.py): Django's own RedisCache opens a
    # pool per async context, so every open agent socket held a Redis connection of its own.
    CACHES = {
        "default": {
            "BACKEND": "core.cache.SharedRedisCache",
            "LOCATION": REDIS_URL,
            "OPTIONS": {
                "pool_class": "redis.BlockingConnectionPool",
                "max_connections": env_int("REDIS_CACHE_MAX_CONNECTIONS", 50),
                "timeout": env_float("REDIS_CACHE_POOL_TIMEOUT", 5),  # seconds to wait for a free connection
            },
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", REDIS_URL)
# "celery": jobs go to Celery workers through the broker.
# "thread": jobs run in a background thread of this process (embedded default).
TASK_RUNNER = env_str("TASK_RUNNER", "celery" if CELERY_BROKER_URL else "thread")
if TASK_RUNNER not in {"celery", "thread"}:
    raise ImproperlyConfigured("TASK_RUNNER must be 'celery' or 'thread'")
if TASK_RUNNER == "celery" and not CELERY_BROKER_URL:
    raise ImproperlyConfigured("TASK_RUNNER=celery needs REDIS_URL or CELERY_BROKER_URL")
# In the embedded default the web process also runs the periodic sweepers.
RUN_PERIODIC_IN_PROCESS = env_bool("RUN_PERIODIC_IN_PROCESS", TASK_RUNNER == "thread")
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True  # a crashed worker's task goes back to the queue
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TIMEZONE = "UTC"
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
# Callbacks wait on other people's servers: they get their own queue (and
# workers), so a slow bot never delays offers to agents.
CELERY_TASK_DEFAULT_QUEUE = "celery"
CELERY_TASK_ROUTES = {"marketplace.tasks.deliver_callbacks": {"queue": "callbacks"}}
# Stripe calls wait on the network too: a queue of their own, served by its own
# process in the Procfile (and its own threads in the embedded runner), so neither a
# slow Stripe delays offers nor a slow bot's callbacks delay transfers.
CELERY_TASK_ROUTES.update(
    {f"payouts.tasks.{name}": {"queue": "payouts"} for name in ("submit_transfer", "submit_reversal")}
)
# Dispatch runs in the process that made the change, right after its commit, on that
# process's job threads (the embedded runner), even when TASK_RUNNER=celery: no broker
# hop and no worker poll between an escalation, an accept or a resolution and the next
# offer. The broker is the backstop, not the path: a process that dies with jobs not yet
# run leaves conversations that the dispatch sweep offers (DISPATCH_SWEEP_MIN_WAIT_SECONDS),
# offers that the offers sweep expires (OFFER_SWEEP_SECONDS) and agents that the presence
# sweep releases, all run by celery beat on the workers.
DISPATCH_IN_PROCESS = env_bool("DISPATCH_IN_PROCESS", True)
IN_PROCESS_TASKS = (
    frozenset(
        f"dispatch.tasks.{name}"
        for name in ("dispatch_conversation", "dispatch_agent", "expire_offer", "release_if_gone")
    )
    if DISPATCH_IN_PROCESS
    else frozenset()
)
# New escalations let into Django at once per web process; more wait, then get a 503 with Retry-After at the
# edge (core/edge.py, IntakeLimitMiddleware), so that a surge cannot queue in front of the agents'
# accepts and resolves on the process's one thread for sync code. 0 turns the limit off.
INTAKE_MAX_IN_FLIGHT = env_int("INTAKE_MAX_IN_FLIGHT", 2)
INTAKE_RETRY_AFTER_SECONDS = env_int("INTAKE_RETRY_AFTER_SECONDS", 1)
# How many more may wait for a turn at the edge (on the event loop, first come first served), and for
# how long, before they are answered 503: a burst is smoothed, a surge is refused.
INTAKE_MAX_WAITING = env_int("INTAKE_MAX_WAITING", 32)
INTAKE_MAX_WAIT_SECONDS = env_float("INTAKE_MAX_WAIT_SECONDS", 1.0)
# Threads per web process for the agents' socket actions (accept, decline, message, resolve, status),
# apart from the one thread that serves HTTP requests (dispatch/consumers.py).
AGENT_ACTION_THREADS = env_int("AGENT_ACTION_THREADS", 4)
# Threads per web process for the database work of opening and closing agent sockets (token,
# connection row, hello: dispatch/socket_db.py), apart from that thread and from the actions'.
SOCKET_DB_THREADS = env_int("SOCKET_DB_THREADS", 4)
JOB_THREADS = {
    "celery": env_int("JOB_THREADS", 4),
    "callbacks": env_int("CALLBACK_THREADS", 8),
    "payouts": env_int("PAYOUT_THREADS", 4),
}

# Periodic jobs. Celery beat runs them in production (django-celery-beat copies
# this schedule into the database, where admins can change it); the embedded
# default runs the same functions on the same periods in-process.
PERIODIC_JOBS = {
    "callbacks-sweep": {"task": "marketplace.tasks.sweep_callbacks", "seconds": env_float("CALLBACK_SWEEP_SECONDS", 5)},
    # Expires offers whose timer was lost; the timer itself fires on time.
    "offers-sweep": {"task": "dispatch.tasks.sweep_offers", "seconds": env_float("OFFER_SWEEP_SECONDS", 1)},
    # Offers waiting work to free agents (skill widening, lost dispatch jobs).
    "dispatch-sweep": {"task": "dispatch.tasks.sweep_dispatch", "seconds": env_float("DISPATCH_SWEEP_SECONDS", 2)},
    # Closes connections of dead web processes and releases agents past their grace.
    "presence-sweep": {"task": "dispatch.tasks.sweep_presence", "seconds": env_float("PRESENCE_SWEEP_SECONDS", 5)},
    # Tells bots of changed queue positions, at most every QUEUE_UPDATE_MIN_SECONDS per conversation.
    "queue-updates": {"task": "dispatch.tasks.push_queue_updates", "seconds": env_float("QUEUE_UPDATE_SECONDS", 5)},
    # Releases earnings past their hold, and retries transfers, reversals and Stripe events left behind.
    "payouts-sweep": {"task": "payouts.tasks.sweep_payouts", "seconds": env_float("PAYOUT_SWEEP_SECONDS", 10)},
    # Tops up last week's earnings to the floor, once per agent and week.
    "earnings-floor": {"task": "dispatch.tasks.close_floor_weeks", "seconds": env_float("FLOOR_SWEEP_SECONDS", 3600)},
}
CELERY_BEAT_SCHEDULE = {name: {"task": job["task"], "schedule": job["seconds"]} for name, job in PERIODIC_JOBS.items()}

# --- Auth, i18n, static ---------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 10}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
# django-axes counts failed logins (the token endpoint, /app/login, /admin/login) per username and,
# separately, per client address; past the limit that username or address is answered 429 with
# Retry-After for LOGIN_LOCKOUT_SECONDS. Successful logins are never counted.
AUTHENTICATION_BACKENDS = [
    "marketplace.access.LoginAttemptsBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = env_int("LOGIN_FAILURE_LIMIT", 10)
AXES_COOLOFF_TIME = timedelta(seconds=env_float("LOGIN_LOCKOUT_SECONDS", 300))
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]
# REMOTE_ADDR as the ASGI server sets it (forwarded headers are trusted only from configured proxies).
AXES_CLIENT_IP_CALLABLE = "marketplace.access.client_address"
AXES_LOCKOUT_CALLABLE = "marketplace.access.lockout_response"
AXES_DISABLE_ACCESS_LOG = True  # no row per successful login (hundreds of load-test agents)
AXES_VERBOSE = False
# Agent tokens die after this long (a new login then issues a new one).
AGENT_TOKEN_TTL_SECONDS = env_float("AGENT_TOKEN_TTL_SECONDS", 30 * 86_400)
# Sockets open at once per agent; the next one is refused (close code 4409).
AGENT_MAX_SOCKETS = env_int("AGENT_MAX_SOCKETS", 5)
# Each web process re-checks its sockets' token or session this often (expiry; a lost revocation message).
AGENT_ACCESS_RECHECK_SECONDS = env_float("AGENT_ACCESS_RECHECK_SECONDS", 5)
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]
CSRF_FAILURE_VIEW = "core.errors.csrf_failure"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if not DEBUG
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}
WHITENOISE_USE_FINDERS = DEBUG

# --- Edge: HTTPS, proxies, body limits, CSP (issue 11.5 and 11.8) --------------
# Production defaults are the safe ones; `make run` and the tests turn them off with DEBUG.
SESSION_COOKIE_SECURE = env_bool("SECURE_COOKIES", not DEBUG)
CSRF_COOKIE_SECURE = env_bool("SECURE_COOKIES", not DEBUG)
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", not DEBUG)
# A load balancer's plain-HTTP health checks get an answer, not a redirect.
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$"]
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0 if DEBUG else 31_536_000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", True)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", True)
# X-Forwarded-For and X-Forwarded-Proto are believed only from these addresses or
# networks (core/edge.py), and only they set the request's client and scheme:
# there is no SECURE_PROXY_SSL_HEADER, which would believe anyone.
TRUSTED_PROXIES = env_list("TRUSTED_PROXIES", [])
# Bodies past their path's limit are refused before they are read (core/edge.py):
# the bot API, Stripe's webhook, and everything else (REQUEST_MAX_BODY_BYTES).
REQUEST_MAX_BODY_BYTES = env_int("REQUEST_MAX_BODY_BYTES", 2_621_440)
# The agent app's policy (django-csp): its scripts and styles are static files, never inline.
CONTENT_SECURITY_POLICY = {
    "EXCLUDE_URL_PREFIXES": ["/admin/", "/api/docs/"],
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "img-src": ["'self'"],
        "connect-src": ["'self'"],
        "manifest-src": ["'self'"],
        "worker-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'none'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    },
}

# --- REST framework and OpenAPI ------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "marketplace.access.ExpiringTokenAuthentication",
        "marketplace.access.AgentSessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["core.parsers.SafeJSONParser"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "core.errors.api_exception_handler",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Human-agent marketplace API",
    "DESCRIPTION": (
        "Escalations from AI bots to freelance human agents. Bot requests are signed with "
        '`X-Bot-Id` and `X-Bot-Signature: t=<unix>,v2=<hex HMAC-SHA256(secret, "<t>.<METHOD>.<path>.<raw body>")>`'
        " (path with its query string as sent; a GET signs the empty body). Callbacks carry "
        '`X-Platform-Signature: t=<unix>,v1=...,v2=<hex HMAC-SHA256(secret, "<t>.callback.<body>")>`.'
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
}

# --- The product's own settings --------------------------------------------------
OFFER_TIMEOUT_SECONDS = env_float("OFFER_TIMEOUT_SECONDS", 20)
PAYOUT_HOLD_SECONDS = env_float("PAYOUT_HOLD_SECONDS", 0)
PRESENCE_GRACE_SECONDS = env_float("PRESENCE_GRACE_SECONDS", 30)
STRIPE_SECRET_KEY = env_str("STRIPE_SECRET_KEY")
STRIPE_WEBHOOK_SECRET = env_str("STRIPE_WEBHOOK_SECRET")
STRIPE_API_BASE = env_str("STRIPE_API_BASE")
STRIPE_WEBHOOK_MAX_BYTES = env_int("STRIPE_WEBHOOK_MAX_BYTES", 512 * 1024)
STRIPE_MAX_NETWORK_RETRIES = env_int("STRIPE_MAX_NETWORK_RETRIES", 2)
STRIPE_TIMEOUT_SECONDS = env_float("STRIPE_TIMEOUT_SECONDS", 20)
STRIPE_ACCOUNT_COUNTRY = env_str("STRIPE_ACCOUNT_COUNTRY", "US")
# Agents whose connected account cannot take transfers may not go online
# (only while Stripe is configured: without it nobody could).
PAYOUTS_REQUIRED_TO_GO_ONLINE = env_bool("PAYOUTS_REQUIRED_TO_GO_ONLINE", True)
# Where Stripe's onboarding sends the agent back to (the agent app).
APP_BASE_URL = env_str("APP_BASE_URL", "http://127.0.0.1:8000").rstrip("/")
# A bot may reopen a resolved conversation for this long (disputing its pay).
REOPEN_WINDOW_SECONDS = env_float("REOPEN_WINDOW_SECONDS", 7 * 24 * 3600)
# Retries of a transfer or reversal that Stripe could not take (network, 5xx).
TRANSFER_RETRY_BASE_SECONDS = env_float("TRANSFER_RETRY_BASE_SECONDS", 5)
TRANSFER_RETRY_MAX_SECONDS = env_float("TRANSFER_RETRY_MAX_SECONDS", 900)
TRANSFER_LEASE_SECONDS = env_float("TRANSFER_LEASE_SECONDS", 60)
# The payouts sweeper starts a job again when the last one was lost for this long, and
# tries held transfers again this often in case Stripe's webhook that frees them was lost.
PAYOUT_REKICK_SECONDS = env_float("PAYOUT_REKICK_SECONDS", 60)
PAYOUT_HELD_RETRY_SECONDS = env_float("PAYOUT_HELD_RETRY_SECONDS", 600)
# Floor top-ups for a week are computed this long after it ends (late resolutions count).
FLOOR_CLOSE_AFTER_SECONDS = env_float("FLOOR_CLOSE_AFTER_SECONDS", 3600)
PLATFORM_CURRENCY = env_str("PLATFORM_CURRENCY", "usd").lower()

# Bot API
BOT_SIGNATURE_TOLERANCE_SECONDS = env_int("BOT_SIGNATURE_TOLERANCE_SECONDS", 300)
BOT_MAX_BODY_BYTES = env_int("BOT_MAX_BODY_BYTES", 256 * 1024)
# Each integration's requests are a token bucket: BOT_RATE_LIMIT_PER_MINUTE sustained, and up to
# BOT_RATE_BURST at once (never more than a minute's worth); an integration may set its own of both.
BOT_RATE_LIMIT_PER_MINUTE = env_int("BOT_RATE_LIMIT_PER_MINUTE", 1200)
BOT_RATE_BURST = env_int("BOT_RATE_BURST", 60)
if BOT_RATE_LIMIT_PER_MINUTE < 1 or BOT_RATE_BURST < 1:
    raise ImproperlyConfigured("BOT_RATE_LIMIT_PER_MINUTE and BOT_RATE_BURST must be at least 1")
SECRET_ROTATION_OVERLAP_SECONDS = env_int("SECRET_ROTATION_OVERLAP_SECONDS", 86_400)
DATA_UPLOAD_MAX_MEMORY_SIZE = max(BOT_MAX_BODY_BYTES, REQUEST_MAX_BODY_BYTES)

# Callbacks to bots
# The total deadline of one attempt: lookup, connect, TLS, send and the answer's headers.
CALLBACK_TIMEOUT_SECONDS = env_float("CALLBACK_TIMEOUT_SECONDS", 10)
CALLBACK_MAX_ATTEMPTS = env_int("CALLBACK_MAX_ATTEMPTS", 12)
CALLBACK_BACKOFF_BASE_SECONDS = env_float("CALLBACK_BACKOFF_BASE_SECONDS", 2)
CALLBACK_BACKOFF_MAX_SECONDS = env_float("CALLBACK_BACKOFF_MAX_SECONDS", 900)
# A delivery that has not reported back within this lease is taken as lost
# (a crashed worker) and handed to the next attempt. Longer than the deadline, so
# that a live attempt is never joined by a second one.
CALLBACK_LEASE_MARGIN_SECONDS = 2.0  # covers the database work around the attempt
CALLBACK_LEASE_SECONDS = env_float("CALLBACK_LEASE_SECONDS", CALLBACK_TIMEOUT_SECONDS + 30)
if CALLBACK_TIMEOUT_SECONDS <= 0 or CALLBACK_LEASE_SECONDS < CALLBACK_TIMEOUT_SECONDS + CALLBACK_LEASE_MARGIN_SECONDS:
    raise ImproperlyConfigured(
        f"CALLBACK_LEASE_SECONDS ({CALLBACK_LEASE_SECONDS:g}) must be at least CALLBACK_TIMEOUT_SECONDS "
        f"({CALLBACK_TIMEOUT_SECONDS:g}) + {CALLBACK_LEASE_MARGIN_SECONDS:g}, or two deliveries of one event overlap"
    )
# At most this much of an answer's body is read (it only goes into the attempt's error).
CALLBACK_MAX_RESPONSE_BYTES = env_int("CALLBACK_MAX_RESPONSE_BYTES", 4096)
# A bulkhead: one integration holds at most this many deliveries at once; its other
# events wait (without spending an attempt) and are looked at again after about
# CALLBACK_BULKHEAD_WAIT_SECONDS, so one slow bot cannot take every callback worker.
CALLBACK_MAX_IN_FLIGHT_PER_INTEGRATION = env_int("CALLBACK_MAX_IN_FLIGHT_PER_INTEGRATION", 4)
CALLBACK_BULKHEAD_WAIT_SECONDS = env_float("CALLBACK_BULKHEAD_WAIT_SECONDS", 1)
if CALLBACK_MAX_IN_FLIGHT_PER_INTEGRATION < 1 or CALLBACK_BULKHEAD_WAIT_SECONDS <= 0:
    raise ImproperlyConfigured("CALLBACK_MAX_IN_FLIGHT_PER_INTEGRATION must be >= 1 and the wait positive")
# Callback URLs must resolve to public addresses, or to one of these networks
# (comma-separated CIDRs; tests and `make run` allow 127.0.0.0/8). Checked when an
# integration is created or edited, and again at every delivery.
CALLBACK_ALLOWED_NETWORKS = env_list("CALLBACK_ALLOWED_NETWORKS", [])
for _cidr in CALLBACK_ALLOWED_NETWORKS:
    try:
        ipaddress.ip_network(_cidr, strict=False)
    except ValueError as _exc:
        raise ImproperlyConfigured(f"CALLBACK_ALLOWED_NETWORKS: {_cidr!r} is not a CIDR ({_exc})") from None
# CA certificates for https callbacks (a file); empty: certifi's bundle.
CALLBACK_CA_BUNDLE = env_str("CALLBACK_CA_BUNDLE")
# A delivery job started this long ago that has not run yet is taken as lost (a
# broker outage) and started again by the sweeper.
CALLBACK_REKICK_SECONDS = env_float("CALLBACK_REKICK_SECONDS", 60)

# Dispatch
SKILL_WIDEN_AFTER_SECONDS = env_float("SKILL_WIDEN_AFTER_SECONDS", 60)
# The sweeper leaves conversations younger than this to their own dispatch jobs.
DISPATCH_SWEEP_MIN_WAIT_SECONDS = env_float("DISPATCH_SWEEP_MIN_WAIT_SECONDS", 2)
MISSES_BEFORE_AWAY = env_int("MISSES_BEFORE_AWAY", 2)
QUEUE_FRONT_HEAD_START_SECONDS = env_float("QUEUE_FRONT_HEAD_START_SECONDS", 86_400)
QUEUE_UPDATE_MIN_SECONDS = env_float("QUEUE_UPDATE_MIN_SECONDS", 15)
SERVER_HEARTBEAT_SECONDS = env_float("SERVER_HEARTBEAT_SECONDS", 5)
SERVER_DEAD_AFTER_SECONDS = env_float("SERVER_DEAD_AFTER_SECONDS", 20)
# A socket that sends nothing (not even `ping`) for this long is closed.
CONNECTION_IDLE_TIMEOUT_SECONDS = env_float("CONNECTION_IDLE_TIMEOUT_SECONDS", 90)
# Garbage collection in the web process (core/gc_policy.py): everything alive frozen at start-up
# and at each heartbeat, no automatic full pass; a full pass after GC_FULL_EVERY_CLOSES socket
# closes or GC_FULL_CLOSED_FRACTION of the open sockets (whichever is more), and at least every
# GC_FULL_EVERY_SECONDS. GC_POLICY=false leaves CPython's defaults.
GC_POLICY = env_bool("GC_POLICY", True)
GC_FULL_EVERY_CLOSES = env_int("GC_FULL_EVERY_CLOSES", 500)
GC_FULL_CLOSED_FRACTION = env_float("GC_FULL_CLOSED_FRACTION", 0.1)
GC_FULL_EVERY_SECONDS = env_float("GC_FULL_EVERY_SECONDS", 600)
WS_MAX_MESSAGE_BYTES = env_int("WS_MAX_MESSAGE_BYTES", 64 * 1024)
WS_RATE_PER_SECOND = env_float("WS_RATE_PER_SECOND", 20)
WS_RATE_BURST = env_int("WS_RATE_BURST", 60)
DEFAULT_PAY_AMOUNT = env_int("DEFAULT_PAY_AMOUNT", 400)
# Service level shown on the admin's operations page: SLA_TARGET_RATIO of the
# conversations should be answered within SLA_ANSWER_SECONDS of entering the queue.
SLA_ANSWER_SECONDS = env_float("SLA_ANSWER_SECONDS", 60)
SLA_TARGET_RATIO = env_float("SLA_TARGET_RATIO", 0.8)
if SLA_ANSWER_SECONDS <= 0 or not 0 < SLA_TARGET_RATIO <= 1:
    raise ImproperlyConfigured("SLA_ANSWER_SECONDS must be positive and SLA_TARGET_RATIO in (0, 1]")

# Admission control (dispatch/services/admission.py): a new escalation whose wait estimate is over
# ADMISSION_SLA_SECONDS is refused with a 503 and Retry-After (at most ADMISSION_RETRY_AFTER_MAX_SECONDS),
# nothing stored. The figure is kept per process for ADMISSION_ESTIMATE_MAX_AGE_SECONDS (0: read every time).
ADMISSION_CONTROL = env_bool("ADMISSION_CONTROL", True)
ADMISSION_SLA_SECONDS = env_float("ADMISSION_SLA_SECONDS", 600)
ADMISSION_RETRY_AFTER_MAX_SECONDS = env_int("ADMISSION_RETRY_AFTER_MAX_SECONDS", 60)
ADMISSION_ESTIMATE_MAX_AGE_SECONDS = env_float("ADMISSION_ESTIMATE_MAX_AGE_SECONDS", 1)
if ADMISSION_SLA_SECONDS <= 0 or ADMISSION_RETRY_AFTER_MAX_SECONDS < 1 or ADMISSION_ESTIMATE_MAX_AGE_SECONDS < 0:
    raise ImproperlyConfigured("ADMISSION_SLA_SECONDS must be positive, ADMISSION_RETRY_AFTER_MAX_SECONDS at least 1")

# Queue and wait estimate
# Priority is a head start in the queue: an urgent conversation is ordered as if
# it had arrived this many seconds earlier. Age therefore always wins in the end,
# so low priority is never starved.
QUEUE_PRIORITY_HEAD_START_SECONDS = {
    "low": env_float("QUEUE_HEAD_START_LOW", 0),
    "normal": env_float("QUEUE_HEAD_START_NORMAL", 60),
    "high": env_float("QUEUE_HEAD_START_HIGH", 300),
    "urgent": env_float("QUEUE_HEAD_START_URGENT", 900),
}
DEFAULT_HANDLE_SECONDS = env_float("DEFAULT_HANDLE_SECONDS", 300)
DEFAULT_ANSWER_SECONDS = env_float("DEFAULT_ANSWER_SECONDS", 10)
HANDLE_TIME_SAMPLE = env_int("HANDLE_TIME_SAMPLE", 200)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "filters": {"quiet_periodic": {"()": "config.logs.QuietPeriodicJobs"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        # Django's own handlers (a console one under DEBUG, mail_admins) go: every record
        # reaches the root's console once. A 4xx is in the server's access log already
        # (Daphne writes one line per request): django.request adds only 5xx, with their
        # tracebacks (a 4xx was logged two or three times, issue 11.12).
        "django": {"handlers": [], "level": "INFO", "propagate": True},
        "django.request": {"level": "ERROR"},
        # Sweeper runs that did nothing drop to DEBUG (config/logs.py).
        "celery.app.trace": {"filters": ["quiet_periodic"]},
        "celery.worker.strategy": {"filters": ["quiet_periodic"]},
        "celery.beat": {"filters": ["quiet_periodic"]},
    },
}

# A stand-in bot endpoint for the demo (marketplace/demo.py).
DEMO_ENDPOINTS = env_bool("DEMO_ENDPOINTS", DEBUG)
