from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from marketplace import services

from ._output import print_json


class Command(BaseCommand):
    help = 'Register an AI bot. Prints {"id", "secret"}.'

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name")
        parser.add_argument("--callback-url", required=True)
        parser.add_argument("--rate-limit", type=int, default=None, help="requests per minute (default: platform's)")
        parser.add_argument(
            "--rate-burst", type=int, default=None, help="requests at once above that rate (default: platform's)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["rate_limit"] is not None and options["rate_limit"] < 1:
            raise CommandError("--rate-limit must be at least 1")
        if options["rate_burst"] is not None and options["rate_burst"] < 1:
            raise CommandError("--rate-burst must be at least 1")
        try:
            integration = services.integration_create(
                data=services.IntegrationInput(
                    name=options["name"],
                    callback_url=options["callback_url"],
                    rate_limit_per_minute=options["rate_limit"],
                    rate_burst=options["rate_burst"],
                )
            )
        except ValidationError as exc:
            problems = "; ".join(f"{field}: {' '.join(msgs)}" for field, msgs in exc.message_dict.items())
            raise CommandError(problems.replace("callback_url", "--callback-url")) from exc
        print_json(
            self,
            {
                "id": integration.id,
                "secret": integration.secret,
                "name": integration.name,
                "callback_url": integration.callback_url,
            },
        )
