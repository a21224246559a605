from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.core.validators import URLValidator

from marketplace.models import BotIntegration

from ._output import print_json


class Command(BaseCommand):
    help = 'Register an AI bot. Prints {"id", "secret"}.'

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name")
        parser.add_argument("--callback-url", required=True)
        parser.add_argument("--rate-limit", type=int, default=None, help="requests per minute (default: platform's)")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            URLValidator(schemes=["http", "https"])(options["callback_url"])
        except ValidationError as exc:
            raise CommandError(f"--callback-url is not an http(s) URL: {options['callback_url']}") from exc
        integration = BotIntegration.objects.create(
            name=options["name"], callback_url=options["callback_url"], rate_limit_per_minute=options["rate_limit"]
        )
        print_json(
            self,
            {
                "id": integration.id,
                "secret": integration.secret,
                "name": integration.name,
                "callback_url": integration.callback_url,
            },
        )
