from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from marketplace import services

from ._output import print_json


def add_agent_arguments(parser: CommandParser) -> None:
    parser.add_argument("--password", required=True)
    parser.add_argument("--languages", default="en", help="comma-separated, e.g. en,sv")
    parser.add_argument("--skills", default="", help="comma-separated, e.g. billing,refunds")
    parser.add_argument("--capacity", type=int, default=1, choices=range(1, 21), metavar="1..20")


class Command(BaseCommand):
    help = 'Create (or update) an approved agent able to log in. Prints {"id", "username"}.'

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        add_agent_arguments(parser)
        parser.add_argument("--display-name", default="")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            agent = services.agent_upsert(
                data=services.AgentInput(
                    username=options["username"],
                    password=options["password"],
                    languages=options["languages"].split(","),
                    skills=options["skills"].split(","),
                    capacity=options["capacity"],
                    display_name=options["display_name"],
                )
            )
        except ValidationError as exc:
            raise CommandError("; ".join(f"{k}: {' '.join(v)}" for k, v in exc.message_dict.items())) from exc
        print_json(self, {"id": agent.id, "username": agent.user.username})
