"""A small, stateful stand-in for the parts of Stripe's API the payouts use.

Stripe cannot be reached from the test machines; the real `stripe` library
talks to this server over real HTTP instead (StripeClient(base_addresses=...)).
Objects are built from Stripe's own fixtures and checked against its OpenAPI
spec (tests/payouts/test_stripe_standin.py, test_spec_conformance.py), so the
shapes cannot drift from the real API's. Both are the subset kept in the
repository, tests/data/stripe/ (scripts/refresh_stripe_spec.py makes it from a
full copy of Stripe's files; tests/payouts/test_stripe_reference.py checks that
it holds every operation in OPERATIONS and every object in RESOURCES).

Covers: accounts (create, retrieve, update), account links, transfers (create,
retrieve, list with filters), transfer reversals, balance. Honours
`Idempotency-Key` (same key, same answer; a different body with the same key is
an error, as on Stripe) and `Stripe-Account`. Faults can be scripted per path:
a status code, a hang past the client's timeout, or `balance_insufficient`.
`emit()` posts a signed webhook event, as Stripe does.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import requests
import yaml

from .processes import local_http_server

# The part of Stripe's spec and fixtures that the tests use, kept in the repository (MIT, Stripe's).
STRIPE_DATA = Path(__file__).resolve().parent / "data" / "stripe"
SPEC_FILE = STRIPE_DATA / "spec3.subset.yaml"
FIXTURES_FILE = STRIPE_DATA / "fixtures3.subset.json"

# What handle() serves, as (method, Stripe's path template), and the objects it builds from the
# fixtures. scripts/refresh_stripe_spec.py keeps the same lists; test_stripe_reference.py checks both.
OPERATIONS: tuple[tuple[str, str], ...] = (
    ("POST", "/v1/accounts"),
    ("GET", "/v1/accounts/{account}"),
    ("POST", "/v1/accounts/{account}"),
    ("POST", "/v1/account_links"),
    ("GET", "/v1/balance"),
    ("GET", "/v1/transfers"),
    ("POST", "/v1/transfers"),
    ("GET", "/v1/transfers/{transfer}"),
    ("GET", "/v1/transfers/{id}/reversals"),
    ("POST", "/v1/transfers/{id}/reversals"),
)
RESOURCES: tuple[str, ...] = ("account", "account_link", "balance", "event", "transfer", "transfer_reversal")


@cache
def spec() -> dict[str, Any]:
    """Stripe's OpenAPI spec (the subset the tests use), loaded once."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with SPEC_FILE.open(encoding="utf-8") as handle:
        loaded: dict[str, Any] = yaml.load(handle, Loader=loader)  # noqa: S506 - a safe loader, chosen above
    return loaded


def fixtures() -> dict[str, Any]:
    resources: dict[str, Any] = json.loads(FIXTURES_FILE.read_text(encoding="utf-8"))["resources"]
    return resources


def _nest(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Stripe's form encoding: metadata[k]=v, capabilities[transfers][requested]=true, expand[]=x."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        parts = key.replace("]", "").split("[")  # "a[b][c]" -> [a, b, c]; "a[]" -> [a, ""]
        node = out
        for depth, part in enumerate(parts):
            if depth == len(parts) - 1:
                node[part] = value
            elif parts[depth + 1] == "" and depth + 1 == len(parts) - 1:
                node.setdefault(part, []).append(value)
                break
            else:
                node = node.setdefault(part, {})
    return out


def _error(status: int, type_: str, message: str, code: str | None = None) -> tuple[int, dict[str, Any]]:
    body: dict[str, Any] = {"error": {"type": type_, "message": message}}
    if code:
        body["error"]["code"] = code
    return status, body


@dataclass
class StripeStandIn:
    base: str = ""
    webhook_secret: str = field(default_factory=lambda: "whsec_" + secrets.token_hex(16))
    available: dict[str, int] = field(default_factory=lambda: {"usd": 10_000_000})
    accounts: dict[str, dict[str, Any]] = field(default_factory=dict)
    transfers: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests_seen: list[tuple[str, str, dict[str, Any], dict[str, str]]] = field(default_factory=list)
    faults: dict[str, list[Any]] = field(
        default_factory=dict
    )  # "POST /v1/transfers" -> [500, ("hang", 3), "balance_insufficient"]
    _idempotent: dict[str, tuple[str, int, dict[str, Any]]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _templates: dict[str, Any] = field(default_factory=fixtures)

    # --- state and objects ---------------------------------------------------

    def _new(self, kind: str, prefix: str, **values: Any) -> dict[str, Any]:
        obj = copy.deepcopy(self._templates[kind])
        obj.update(id=f"{prefix}_{secrets.token_hex(8)}", created=int(time.time()), livemode=False)
        obj.update(values)
        return obj

    def account_create(self, params: dict[str, Any]) -> dict[str, Any]:
        requested = "transfers" in params.get("capabilities", {})
        account = self._new(
            "account",
            "acct",
            type=params.get("type", "express"),
            country=params.get("country", "US"),
            email=params.get("email"),
            metadata=params.get("metadata", {}),
            capabilities={"transfers": "inactive"} if requested else {},
            charges_enabled=False,
            payouts_enabled=False,
            details_submitted=False,
        )
        account["requirements"] = {
            **account.get("requirements", {}),
            "currently_due": ["external_account", "tos_acceptance.date"],
            "past_due": [],
            "disabled_reason": "requirements.past_due",
        }
        self.accounts[account["id"]] = account
        return account

    def account_activate(self, account_id: str) -> dict[str, Any]:
        """Test helper: the agent finished onboarding; transfers are now possible."""
        account = self.accounts[account_id]
        account.update(capabilities={"transfers": "active"}, payouts_enabled=True, details_submitted=True)
        account["requirements"].update(currently_due=[], past_due=[], disabled_reason=None)
        return account

    def transfer_create(self, params: dict[str, Any], stripe_account: str | None) -> tuple[int, dict[str, Any]]:
        for required in ("amount", "currency", "destination"):
            if required not in params:
                return _error(400, "invalid_request_error", f"Missing required param: {required}.", "parameter_missing")
        amount, currency, destination = int(params["amount"]), params["currency"].lower(), params["destination"]
        account = self.accounts.get(destination)
        if account is None:
            return _error(400, "invalid_request_error", f"No such destination: '{destination}'", "resource_missing")
        if account["capabilities"].get("transfers") != "active":
            return _error(
                400,
                "invalid_request_error",
                "The destination account cannot receive transfers.",
                "insufficient_capabilities_for_transfer",
            )
        if self.available.get(currency, 0) < amount:
            return _error(400, "invalid_request_error", "Insufficient funds in Stripe account.", "balance_insufficient")
        self.available[currency] -= amount
        transfer = self._new(
            "transfer",
            "tr",
            amount=amount,
            currency=currency,
            destination=destination,
            description=params.get("description"),
            metadata=params.get("metadata", {}),
            transfer_group=params.get("transfer_group"),
            amount_reversed=0,
            reversed=False,
        )
        transfer["reversals"] = {
            "object": "list",
            "data": [],
            "has_more": False,
            "url": f"/v1/transfers/{transfer['id']}/reversals",
        }
        self.transfers[transfer["id"]] = transfer
        return 200, transfer

    def reversal_create(self, transfer_id: str, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        transfer = self.transfers.get(transfer_id)
        if transfer is None:
            return _error(404, "invalid_request_error", f"No such transfer: '{transfer_id}'", "resource_missing")
        amount = int(params.get("amount", transfer["amount"] - transfer["amount_reversed"]))
        if amount > transfer["amount"] - transfer["amount_reversed"]:
            return _error(400, "invalid_request_error", "Reversal exceeds the transfer.", "amount_too_large")
        reversal = self._new(
            "transfer_reversal",
            "trr",
            amount=amount,
            currency=transfer["currency"],
            transfer=transfer_id,
            metadata=params.get("metadata", {}),
        )
        transfer["amount_reversed"] += amount
        transfer["reversed"] = transfer["amount_reversed"] == transfer["amount"]
        transfer["reversals"]["data"].append(reversal)
        self.available[transfer["currency"]] = self.available.get(transfer["currency"], 0) + amount
        return 200, reversal

    def balance(self) -> dict[str, Any]:
        obj = copy.deepcopy(self._templates["balance"])
        obj["available"] = [
            {"amount": a, "currency": c, "source_types": {"card": a}} for c, a in self.available.items()
        ]
        obj["pending"] = [{"amount": 0, "currency": c, "source_types": {"card": 0}} for c in self.available]
        return obj

    @staticmethod
    def _list(items: list[dict[str, Any]], url: str, query: dict[str, Any]) -> dict[str, Any]:
        items = sorted(items, key=lambda o: o["created"], reverse=True)
        if "starting_after" in query:
            ids = [o["id"] for o in items]
            items = items[ids.index(query["starting_after"]) + 1 :] if query["starting_after"] in ids else []
        limit = int(query.get("limit", 10))
        return {"object": "list", "data": items[:limit], "has_more": len(items) > limit, "url": url}

    # --- routing ---------------------------------------------------------------

    def handle(
        self, method: str, path: str, params: dict[str, Any], headers: dict[str, str]
    ) -> tuple[int, dict[str, Any]]:
        parts = path.strip("/").split("/")
        stripe_account = headers.get("stripe-account")
        if method == "POST" and path == "/v1/accounts":
            return 200, self.account_create(params)
        if method in ("GET", "POST") and len(parts) == 3 and parts[1] == "accounts":
            account = self.accounts.get(parts[2])
            if account is None:
                return _error(404, "invalid_request_error", f"No such account: '{parts[2]}'", "resource_missing")
            if method == "POST":
                account["metadata"].update(params.get("metadata", {}))
            return 200, account
        if method == "POST" and path == "/v1/account_links":
            if params.get("account") not in self.accounts:
                return _error(400, "invalid_request_error", "No such account.", "resource_missing")
            link = copy.deepcopy(self._templates["account_link"])
            link.update(
                created=int(time.time()),
                expires_at=int(time.time()) + 300,
                url=f"{self.base}/onboarding/{params['account']}?return_url={params.get('return_url', '')}",
            )
            return 200, link
        if path == "/v1/transfers":
            if method == "POST":
                return self.transfer_create(params, stripe_account)
            matching = [
                t
                for t in self.transfers.values()
                if all(t.get(k) == params[k] for k in ("destination", "transfer_group") if k in params)
            ]
            return 200, self._list(matching, path, params)
        if len(parts) >= 3 and parts[1] == "transfers":
            if len(parts) == 4 and parts[3] == "reversals":
                if method == "POST":
                    return self.reversal_create(parts[2], params)
                transfer = self.transfers.get(parts[2])
                return (
                    (200, self._list(transfer["reversals"]["data"], path, params))
                    if transfer
                    else _error(404, "invalid_request_error", "No such transfer.", "resource_missing")
                )
            transfer = self.transfers.get(parts[2])
            if transfer is None:
                return _error(404, "invalid_request_error", f"No such transfer: '{parts[2]}'", "resource_missing")
            return 200, transfer
        if method == "GET" and path == "/v1/balance":
            return 200, self.balance()
        return _error(404, "invalid_request_error", f"Unrecognized request URL ({method}: {path}).")

    def dispatch(
        self, method: str, path: str, params: dict[str, Any], headers: dict[str, str]
    ) -> tuple[int, dict[str, Any], float]:
        """Faults, then idempotency, then the route. Returns (status, body, seconds to hang first)."""
        with self._lock:
            self.requests_seen.append((method, path, params, headers))
            script = self.faults.get(f"{method} {path.split('?')[0]}")
            key = headers.get("idempotency-key")
            replay = bool(key and method == "POST" and key in self._idempotent)
            # A replayed key gets its first answer (as on Stripe): a business error such
            # as balance_insufficient only ever answers a fresh request.
            fault = script.pop(0) if script and not (replay and script[0] == "balance_insufficient") else None
            if isinstance(fault, int):
                return (*_error(fault, "api_error", "Injected failure."), 0.0)
            if fault == "balance_insufficient":
                return (
                    *_error(
                        400, "invalid_request_error", "Insufficient funds in Stripe account.", "balance_insufficient"
                    ),
                    0.0,
                )
            hang = float(fault[1]) if isinstance(fault, tuple) and fault[0] == "hang" else 0.0
            fingerprint = json.dumps([method, path, params], sort_keys=True)
            if key and method == "POST" and key in self._idempotent:
                seen, status, body = self._idempotent[key]
                if seen != fingerprint:
                    return (
                        *_error(
                            400,
                            "idempotency_error",
                            "Keys for idempotent requests can only be used with the same parameters "
                            "they were first used with.",
                        ),
                        0.0,
                    )
                return status, body, hang
            status, body = self.handle(method, path, params, headers)
            if key and method == "POST" and status < 500:
                self._idempotent[key] = (fingerprint, status, copy.deepcopy(body))
            return status, body, hang

    # --- webhooks ----------------------------------------------------------------

    def event(self, type_: str, obj: dict[str, Any], account: str | None = None) -> dict[str, Any]:
        event = copy.deepcopy(self._templates["event"])
        event.update(
            id=f"evt_{secrets.token_hex(8)}",
            type=type_,
            created=int(time.time()),
            data={"object": copy.deepcopy(obj)},
            livemode=False,
        )
        if account:
            event["account"] = account
        return event

    def sign(self, payload: bytes, timestamp: int | None = None) -> str:
        t = int(time.time()) if timestamp is None else timestamp
        digest = hmac.new(self.webhook_secret.encode(), f"{t}.".encode() + payload, hashlib.sha256).hexdigest()
        return f"t={t},v1={digest}"

    def emit(self, url: str, event: dict[str, Any]) -> requests.Response:
        payload = json.dumps(event).encode()
        return requests.post(
            url,
            data=payload,
            headers={"Content-Type": "application/json", "Stripe-Signature": self.sign(payload)},
            timeout=10,
        )


def serve() -> Iterator[StripeStandIn]:
    """Run a stand-in on a free port for as long as the generator is open."""
    standin = StripeStandIn()

    class Handler(BaseHTTPRequestHandler):
        def _respond(self, method: str) -> None:
            split = urlsplit(self.path)
            length = int(self.headers.get("Content-Length", 0) or 0)
            body = self.rfile.read(length).decode() if length else ""
            params = _nest(parse_qsl(body or split.query, keep_blank_values=True))
            headers = {k.lower(): v for k, v in self.headers.items()}
            if not headers.get("authorization", "").startswith("Bearer sk_"):
                status, payload, hang = (*_error(401, "invalid_request_error", "Invalid API Key provided."), 0.0)
            else:
                status, payload, hang = standin.dispatch(method, split.path, params, headers)
            if hang:
                time.sleep(hang)
            data = json.dumps(payload).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Request-Id", f"req_{secrets.token_hex(7)}")
                if headers.get("idempotency-key"):
                    self.send_header("Idempotency-Key", headers["idempotency-key"])
                self.end_headers()
                self.wfile.write(data)
            except OSError:
                pass  # the client gave up (a hang past its timeout)

        def do_GET(self) -> None:  # noqa: N802
            self._respond("GET")

        def do_POST(self) -> None:  # noqa: N802
            self._respond("POST")

        def do_DELETE(self) -> None:  # noqa: N802
            self._respond("DELETE")

        def log_message(self, *args: Any) -> None:
            pass

    with local_http_server(Handler) as base:
        standin.base = base
        yield standin
