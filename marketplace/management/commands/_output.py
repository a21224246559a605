import json
from typing import Any

from django.core.management.base import BaseCommand


def print_json(command: BaseCommand, payload: Any) -> None:
    """Every operator command prints exactly one JSON object on stdout."""
    command.stdout.write(json.dumps(payload, default=str))
