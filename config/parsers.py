"""JSON parsing that fails with a 400, never a 500."""

from __future__ import annotations

from typing import Any

from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser


class SafeJSONParser(JSONParser):
    """DRF's JSON parser, plus a clean 400 for input nested too deep to parse."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError("JSON parse error - nested too deeply.") from None


class AnyContentTypeJSONParser(SafeJSONParser):
    """Bots send JSON; a missing or wrong Content-Type should not turn a good body into a 415."""

    media_type = "*/*"
