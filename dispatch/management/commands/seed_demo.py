from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from marketplace import services
from marketplace.management.commands._output import print_json
from marketplace.models import Agent, BotIntegration
from payouts.models import PayRule

DEMO_PASSWORD = "demo-pass-123"  # noqa: S105 - demo accounts only
DEMO_ADMIN_PASSWORD = "admin-pass-123"  # noqa: S105 - DEBUG only; 10+ characters like every password
# Base pay per resolution, in minor units of the platform currency (blank: any).
DEMO_PAY_RULES = [
    {"topic": "", "priority": "", "language": "", "amount": 400},
    {"topic": "refunds", "priority": "", "language": "", "amount": 500},
    {"topic": "technical", "priority": "", "language": "", "amount": 600},
    {"topic": "", "priority": "urgent", "language": "", "amount": 700},
    {"topic": "refunds", "priority": "urgent", "language": "", "amount": 800},
]
DEMO_AGENTS = [
    services.AgentInput("alice", DEMO_PASSWORD, ["en", "sv"], ["billing", "refunds"], 2, "Alice"),
    services.AgentInput("bob", DEMO_PASSWORD, ["en"], ["billing", "technical"], 1, "Bob"),
    services.AgentInput("carmen", DEMO_PASSWORD, ["es", "en"], ["refunds", "technical"], 3, "Carmen"),
]


class Command(BaseCommand):
    help = "Idempotent demo data: an admin (with DEBUG), a demo bot integration, a few agents and pay rates."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--base-url", default="http://127.0.0.1:8000", help="where this server answers")

    def handle(self, *args: Any, **options: Any) -> None:
        created: list[str] = []
        result: dict[str, Any] = {}
        if settings.DEBUG:
            user_model = get_user_model()
            if not user_model.objects.filter(username="admin").exists():
                user_model.objects.create_superuser("admin", "admin@example.com", DEMO_ADMIN_PASSWORD)
                created.append("admin")
            result["admin"] = {"username": "admin", "password": DEMO_ADMIN_PASSWORD}
        callback_url = options["base_url"].rstrip("/") + "/demo/bot/callbacks"
        integration = BotIntegration.objects.filter(name="Demo bot").first()
        try:
            if integration is None:
                integration = services.integration_create(
                    data=services.IntegrationInput(name="Demo bot", callback_url=callback_url)
                )
                created.append(f"integration {integration.id}")
            elif integration.callback_url != callback_url:  # the demo now runs on another address
                integration = services.integration_set_callback_url(integration_id=integration.pk, url=callback_url)
        except ValidationError as exc:
            # The demo bot answers inside this service: its address must be allowed (make run allows loopback).
            problems = "; ".join(" ".join(msgs) for msgs in exc.message_dict.values())
            raise CommandError(
                f"the demo bot's callback URL {callback_url}: {problems} (set CALLBACK_ALLOWED_NETWORKS=127.0.0.0/8)"
            ) from exc
        result["integration"] = {
            "id": integration.id,
            "secret": integration.secret,
            "callback_url": integration.callback_url,
        }
        agents = []
        for spec in DEMO_AGENTS:
            if not Agent.objects.filter(user__username=spec.username).exists():
                services.agent_upsert(data=spec)
                created.append(f"agent {spec.username}")
            agent = Agent.objects.get(user__username=spec.username)
            agents.append({"id": agent.id, "username": spec.username, "password": DEMO_PASSWORD})
        result["agents"] = agents
        for rule in DEMO_PAY_RULES:
            key = {k: rule[k] for k in ("topic", "priority", "language")}
            if not PayRule.objects.filter(**key).exists():
                PayRule.objects.create(**rule)
                created.append(f"pay rule {rule['topic'] or '*'}/{rule['priority'] or '*'}")
        result["pay_rules"] = [
            {"topic": r.topic, "priority": r.priority, "language": r.language, "amount": r.amount}
            for r in PayRule.objects.filter(active=True)
        ]
        result["created"] = created
        print_json(self, result)
