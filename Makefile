# Two commands set everything up on a fresh machine:
#   make run    the service with demo data, embedded (SQLite, in-memory layer, in-process jobs)
#   make test   lint, type checks and the whole test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 8000
# These targets are for a developer's machine: development settings (DEBUG on, a
# development key, the demo endpoints). Production leaves DEBUG unset, which means off.
export DEBUG ?= true

.PHONY: install install-dev run test lint pytest migrate demo-escalation worker beat api-docs clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.runtime: requirements.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.dev: requirements.txt requirements-dev.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@ $(VENV)/.runtime

install: $(VENV)/.runtime
install-dev: $(VENV)/.dev

migrate: install
	$(BIN)/python manage.py migrate --noinput

# The demo bot's callback endpoint is inside the service, on loopback: allowed explicitly
# (production allows public addresses only).
run: export CALLBACK_ALLOWED_NETWORKS ?= 127.0.0.0/8,::1/128
run: migrate
	@$(BIN)/python manage.py seed_demo --base-url http://$(HOST):$(PORT) > .seed.json
	@$(BIN)/python scripts/banner.py .seed.json http://$(HOST):$(PORT)
	$(BIN)/daphne -b $(HOST) -p $(PORT) config.asgi:application

# Acts as the demo bot against `make run`: one signed escalation.
demo-escalation: install
	$(BIN)/python manage.py demo_escalation --base-url http://$(HOST):$(PORT)

worker: export CALLBACK_ALLOWED_NETWORKS ?= 127.0.0.0/8,::1/128
worker: install
	$(BIN)/celery -A config worker -Q celery,callbacks,payouts --pool=threads --concurrency=8 --loglevel=info

beat: install
	$(BIN)/celery -A config beat --loglevel=info --scheduler django_celery_beat.schedulers:DatabaseScheduler

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

pytest: install-dev
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test: lint pytest

# docs/openapi.yaml and docs/API_REFERENCE.md, generated from the code (tests/test_api_docs.py checks them).
api-docs: install
	$(BIN)/python scripts/api_docs.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache staticfiles .seed.json db.sqlite3* .test-db.sqlite3*
