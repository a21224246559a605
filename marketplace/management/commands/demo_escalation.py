import json
import time
from typing import Any

import requests
from django.core.management.base import BaseCommand, CommandError, CommandParser

from marketplace import signing
from marketplace.models import BotIntegration

from ._output import print_json


class Command(BaseCommand):
    help = "Act as the demo bot: send one signed escalation to a running server and print the answer."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--base-url", default="http://127.0.0.1:8000")
        parser.add_argument("--integration", default=None, help="integration id (default: the demo bot)")
        parser.add_argument("--language", default="en")
        parser.add_argument("--topic", default="billing")
        parser.add_argument("--priority", default="normal")

    def handle(self, *args: Any, **options: Any) -> None:
        query = BotIntegration.objects.all()
        integration = (
            query.filter(pk=options["integration"]).first()
            if options["integration"]
            else query.filter(name="Demo bot").first()
        )
        if integration is None:
            raise CommandError("no such integration; run `python manage.py seed_demo` first")
        body = json.dumps(
            {
                "external_id": f"demo-{int(time.time() * 1000)}",
                "language": options["language"],
                "topic": options["topic"],
                "priority": options["priority"],
                "reason": "customer_requested",
                "customer": {"id": "c-demo", "name": "Demo Customer"},
                "summary": "Was charged twice for one order and wants a refund",
                "transcript": [
                    {"role": "customer", "text": "I was charged twice"},
                    {"role": "bot", "text": "Let me get you a human"},
                ],
            }
        ).encode()
        path = "/api/v1/escalations"
        response = requests.post(
            options["base_url"].rstrip("/") + path,
            data=body,
            headers={
                "Content-Type": "application/json",
                "X-Bot-Id": integration.id,
                "X-Bot-Signature": signing.request_header(integration.secret, "POST", path, body),
            },
            timeout=10,
        )
        print_json(self, {"status": response.status_code, "body": response.json()})
