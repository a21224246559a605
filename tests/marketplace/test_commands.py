"""Operator commands print the JSON that docs/API.md (Operator commands) names."""

from __future__ import annotations

import io
import json

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client

from marketplace.models import Agent, BotIntegration
from payouts.models import PayRule

pytestmark = pytest.mark.django_db


def run(*args: str) -> dict:
    out = io.StringIO()
    call_command(*args, stdout=out)
    return json.loads(out.getvalue())


def test_create_bot_integration_prints_id_and_secret():
    # A public address (a literal: the tests resolve no outside name and never call it).
    result = run("create_bot_integration", "Acme bot", "--callback-url", "https://93.184.215.14/hooks")
    integration = BotIntegration.objects.get(pk=result["id"])
    assert result["secret"] == integration.secret
    assert integration.callback_url == "https://93.184.215.14/hooks"
    assert integration.active


def test_create_bot_integration_refuses_a_bad_url():
    with pytest.raises(CommandError, match="callback-url"):
        run("create_bot_integration", "x", "--callback-url", "not a url")


def test_create_agent_makes_an_approved_agent_who_can_log_in():
    result = run(
        "create_agent",
        "anna",
        "--password",
        "s3cret-pass",
        "--languages",
        "en,SV",
        "--skills",
        "billing,refunds",
        "--capacity",
        "2",
    )
    agent = Agent.objects.get(pk=result["id"])
    assert result["username"] == "anna"
    assert (agent.languages, agent.skills, agent.capacity, agent.approval) == (
        ["en", "sv"],
        ["billing", "refunds"],
        2,
        "approved",
    )
    response = Client().post(
        "/api/v1/auth/token", {"username": "anna", "password": "s3cret-pass"}, content_type="application/json"
    )
    assert response.status_code == 200
    assert len(response.json()["token"]) == 40
    bad = Client().post(
        "/api/v1/auth/token", {"username": "anna", "password": "wrong"}, content_type="application/json"
    )
    assert bad.status_code == 400


def test_create_agent_twice_updates_instead_of_duplicating():
    first = run("create_agent", "anna", "--password", "s3cret-pass", "--capacity", "1")
    again = run("create_agent", "anna", "--password", "other-pass", "--capacity", "3")
    assert first["id"] == again["id"]
    assert Agent.objects.get().capacity == 3


def test_create_agents_makes_many_with_working_tokens():
    result = run(
        "create_agents",
        "--prefix",
        "load",
        "--count",
        "25",
        "--password",
        "P-assw0rd-42",
        "--languages",
        "en",
        "--skills",
        "billing",
        "--capacity",
        "2",
    )
    agents = result["agents"]
    assert [a["username"] for a in agents] == [f"load{n}" for n in range(1, 26)]
    assert Agent.objects.filter(approval="approved", capacity=2).count() == 25
    client = Client()
    token = client.post(
        "/api/v1/auth/token", {"username": "load7", "password": "P-assw0rd-42"}, content_type="application/json"
    )
    assert token.json()["token"] == agents[6]["token"]
    with pytest.raises(CommandError, match="exist"):
        run("create_agents", "--prefix", "load", "--count", "2", "--password", "P-assw0rd-42")


def test_seed_demo_is_idempotent():
    first = run("seed_demo")
    again = run("seed_demo")
    assert first["created"] and again["created"] == []
    assert first["integration"] == again["integration"]
    assert BotIntegration.objects.count() == 1
    assert Agent.objects.count() == len(first["agents"]) == 3
    assert first["pay_rules"] == again["pay_rules"] and len(first["pay_rules"]) == PayRule.objects.count() == 5


def test_a_service_name_is_a_fine_callback_host_when_its_network_is_allowed():
    # `localhost` stands in for a service name: one label, resolving to an allowed network (tests allow loopback).
    result = run("create_bot_integration", "in-cluster", "--callback-url", "http://localhost:8080/cb")
    assert BotIntegration.objects.get(pk=result["id"]).callback_url == "http://localhost:8080/cb"


@pytest.mark.parametrize("url", ["http://169.254.169.254/latest/meta-data/", "http://localhost:8000/admin/"])
def test_create_bot_integration_refuses_an_internal_address(url, settings):
    settings.CALLBACK_ALLOWED_NETWORKS = []  # production's default: public addresses only
    with pytest.raises(CommandError, match=r"--callback-url: Not an allowed callback URL: .* not a public address"):
        run("create_bot_integration", "x", "--callback-url", url)
    assert not BotIntegration.objects.exists()


def test_create_bot_integration_refuses_a_host_that_does_not_resolve(monkeypatch):
    import socket

    def no_such_host(*args, **kwargs):  # the resolver's answer, without asking a DNS server off this machine
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_such_host)
    with pytest.raises(CommandError, match="does not resolve"):
        run("create_bot_integration", "x", "--callback-url", "http://no-such-host.invalid/cb")


@pytest.mark.parametrize(
    "args",
    [
        ("create_bot_integration", "x" * 200, "--callback-url", "https://93.184.215.14"),
        ("create_bot_integration", "x", "--callback-url", "https://93.184.215.14", "--rate-limit", "-5"),
        ("create_agent", "bad user!", "--password", "s3cret-pass"),
        ("create_agent", "u" * 200, "--password", "s3cret-pass"),
        ("create_agent", "ok", "--password", "s3cret-pass", "--display-name", "d" * 100),
        ("create_agent", "ok", "--password", "s3cret-pass", "--languages", "english"),
        ("create_agents", "--prefix", "bad prefix ", "--count", "2", "--password", "P-assw0rd-42"),
    ],
)
def test_bad_arguments_are_a_clear_error_not_a_traceback(args):
    with pytest.raises(CommandError):
        run(*args)
    assert not Agent.objects.exists()


def test_create_agent_does_not_reapprove_a_suspended_agent():
    first = run("create_agent", "anna", "--password", "s3cret-pass")
    Agent.objects.filter(pk=first["id"]).update(approval="suspended")
    run("create_agent", "anna", "--password", "new-pass-123")
    assert Agent.objects.get().approval == "suspended"


def test_seed_demo_follows_the_address_it_runs_on():
    run("seed_demo")
    run("seed_demo", "--base-url", "http://127.0.0.1:9000")
    assert BotIntegration.objects.get().callback_url == "http://127.0.0.1:9000/demo/bot/callbacks"


def test_seed_demo_says_clearly_when_loopback_callbacks_are_not_allowed(settings):
    settings.CALLBACK_ALLOWED_NETWORKS = []
    with pytest.raises(CommandError, match="CALLBACK_ALLOWED_NETWORKS=127.0.0.0/8"):
        run("seed_demo")
