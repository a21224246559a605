from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from marketplace import services

from ._output import print_json
from .create_agent import add_agent_arguments


class Command(BaseCommand):
    help = "Create PREFIX1..PREFIXN approved agents with API tokens, for demos and load tests."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--prefix", required=True)
        parser.add_argument("--count", type=int, required=True)
        add_agent_arguments(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        if not 1 <= options["count"] <= 100_000:
            raise CommandError("--count must be between 1 and 100000")
        try:
            created = services.agents_create_bulk(
                prefix=options["prefix"],
                count=options["count"],
                template=services.AgentInput(
                    username="",
                    password=options["password"],
                    languages=options["languages"].split(","),
                    skills=options["skills"].split(","),
                    capacity=options["capacity"],
                ),
            )
        except ValidationError as exc:
            raise CommandError("; ".join(f"{k}: {' '.join(v)}" for k, v in exc.message_dict.items())) from exc
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        print_json(
            self,
            {"agents": [{"id": agent.id, "username": agent.user.username, "token": token} for agent, token in created]},
        )
