"""Hypothesis throws odd escalation bodies and signature headers at the bot API: never a 5xx (issue 11.9)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import Client
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from marketplace import signing

from ..conftest import BotClient

pytestmark = pytest.mark.django_db

PATH = "/api/v1/escalations"
# Text a JSON body can carry but no store can keep, mixed with ordinary text.
odd_text = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["\x00", "a\x00b", "\ud800", "x\udfffy", "\ud83d\ude00", "²", "١٢", "zz-NOPE", "sv-SE", " "]),
)
odd_numbers = st.one_of(
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([float("nan"), float("inf"), -float("inf"), 1e308, -0.0]),
)
scalars = st.one_of(st.none(), st.booleans(), odd_numbers, odd_text)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(odd_text, inner, max_size=4)),
    max_leaves=12,
)
transcript_entry = st.fixed_dictionaries(
    {},
    optional={
        "role": st.one_of(st.sampled_from(["customer", "bot", "agent", "system"]), json_values),
        "text": st.one_of(odd_text, json_values),
        "at": st.one_of(st.sampled_from(["2026-11-22T10:00:00Z", "yesterday", "2026-13-40T99:00:00Z"]), json_values),
    },
)
escalation = st.fixed_dictionaries(
    {"external_id": st.one_of(st.sampled_from(["fz-1", "fz-2", "fz-3"]), odd_text, json_values)},
    optional={
        "language": st.one_of(st.sampled_from(["en", "sv-SE", "zh-Hant", "zz-NOPE", "en-NOPE", "EN"]), odd_text),
        "topic": st.one_of(st.sampled_from(["billing", "Refunds"]), odd_text, json_values),
        "priority": st.one_of(st.sampled_from(["low", "normal", "high", "urgent"]), json_values),
        "reason": st.one_of(odd_text, json_values),
        "customer": st.one_of(st.dictionaries(odd_text, json_values, max_size=5), json_values),
        "summary": st.one_of(odd_text, json_values),
        "transcript": st.one_of(st.lists(transcript_entry, max_size=4), json_values),
    },
)
bodies = st.one_of(
    escalation.map(lambda d: json.dumps(d, allow_nan=True).encode()),  # ensure_ascii: "\ud800" stays an escape
    json_values.map(lambda d: json.dumps(d, allow_nan=True).encode()),
    st.binary(max_size=40),
)
# How the request is signed: right (v2, or v2 beside v1), or a header drawn from odd text.
signatures = st.one_of(
    st.sampled_from(["v2", "v2+v1", "wrong path", "wrong method"]),
    st.text(max_size=40).map(lambda t: "raw:" + t),
    st.sampled_from(["raw:t=²,v2=ab", "raw:t=١٢,v2=ab", "raw:t=1,v1=ab", "raw:t=99999999999999999999,v2=0"]),
)


def header_for(secret: str, body: bytes, how: str) -> str:
    if how.startswith("raw:"):
        return how.removeprefix("raw:")
    method = "GET" if how == "wrong method" else "POST"
    path = PATH + "/x" if how == "wrong path" else PATH
    return signing.request_header(secret, method, path, body, with_v1=how == "v2+v1")


@given(body=bodies, how=signatures, bot_id=st.one_of(st.just("ours"), st.text(max_size=20)))
@example(body=b'{"external_id": "e", "customer": {"n": NaN}}', how="v2", bot_id="ours")
@example(body=b'{"external_id": "e", "customer": {"n": 1e400}}', how="v2", bot_id="ours")
@example(body=b'{"external_id": "e", "customer": {"n": "\\u0000"}}', how="v2", bot_id="ours")
@example(body=b'{"external_id": "e", "customer": {"\\ud800": "x"}}', how="v2", bot_id="ours")
@example(body=b'{"external_id": "e", "language": "zz-NOPE"}', how="v2", bot_id="ours")
@example(body=b'{"external_id": "e"}', how="raw:t=\xb2,v2=ab".encode("latin-1").decode("latin-1"), bot_id="ours")
@example(body=b'{"external_id": "e"}', how="v2", bot_id="bot_\x00")  # was a 500: NUL sent to PostgreSQL
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_no_escalation_body_or_signature_header_is_a_5xx(bot: BotClient, body: bytes, how: str, bot_id: Any) -> None:
    integration = bot.integration
    integration.rate_limit_per_minute = 1_000_000
    headers = {
        "X-Bot-Id": integration.id if bot_id == "ours" else bot_id,
        "X-Bot-Signature": header_for(integration.secret, body, how),
    }
    client = Client(raise_request_exception=False)
    response = client.generic("POST", PATH, body, content_type="application/json", headers=headers)
    event(f"status {response.status_code}")  # --hypothesis-show-statistics: the bodies get past the door
    assert 200 <= response.status_code < 500, (response.status_code, response.content[:300])
    if response.status_code >= 400:
        error = response.json()["error"]
        assert error["code"] and error["detail"]
