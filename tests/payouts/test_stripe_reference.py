"""The part of Stripe's spec and fixtures kept in the repository (tests/data/stripe/) is enough for the
stand-in and the tests, self-contained, small, and what scripts/refresh_stripe_spec.py makes."""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from ..stripe_standin import FIXTURES_FILE, OPERATIONS, RESOURCES, SPEC_FILE, STRIPE_DATA, StripeStandIn, fixtures, spec

ROOT = Path(__file__).resolve().parents[2]
# A full copy of Stripe's files, when one happens to be beside the checkout (CI has one); never required.
FULL = Path(os.environ.get("STRIPE_FULL_SPEC_DIR", ROOT.parent / "shared" / "stripe"))


def script() -> ModuleType:
    module_spec = importlib.util.spec_from_file_location("refresh_stripe_spec", ROOT / "scripts/refresh_stripe_spec.py")
    assert module_spec and module_spec.loader
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def sample_path(template: str) -> str:
    return re.sub(r"\{[^}]+\}", "x_1", template)


def all_refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [ref for value in node.values() for ref in all_refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in all_refs(value)]
    return []


def test_every_operation_the_standin_serves_is_in_the_subset_and_no_other():
    in_spec = {(method.upper(), template) for template, ops in spec()["paths"].items() for method in ops}
    assert in_spec == set(OPERATIONS)
    standin = StripeStandIn()
    for method, template in OPERATIONS:
        status, body = standin.handle(method, sample_path(template), {}, {})
        assert not body.get("error", {}).get("message", "").startswith("Unrecognized request URL"), (
            f"StripeStandIn.OPERATIONS lists {method} {template}, which handle() does not serve"
        )
    # and the check bites: an operation the stand-in does not serve is not recognised
    assert standin.handle("GET", "/v1/payouts", {}, {})[1]["error"]["message"].startswith("Unrecognized request URL")


def test_every_object_the_standin_builds_has_its_fixture_and_its_whole_schema():
    assert set(fixtures()) == set(RESOURCES)
    schemas = spec()["components"]["schemas"]
    for name in RESOURCES:
        assert fixtures()[name]["object"] == name
        assert name in schemas and not schemas[name].get("x-stubbed-by-subset"), name
        assert set(schemas[name].get("required", [])) <= set(schemas[name]["properties"])
    assert "error" in schemas  # Stripe's error object, which the stand-in answers with


def test_every_ref_in_the_subset_resolves():
    schemas = spec()["components"]["schemas"]
    refs = set(all_refs(spec()))
    assert refs and all(ref.startswith("#/components/schemas/") for ref in refs)
    assert {ref.rsplit("/", 1)[1] for ref in refs} - set(schemas) == set()
    for name, schema in schemas.items():
        if schema.get("x-stubbed-by-subset"):
            assert schema["x-resourceId"] and "properties" not in schema, name  # a stub names what it stands for


def test_the_subset_is_small_and_carries_stripes_licence_and_its_source():
    assert SPEC_FILE.stat().st_size < 400_000 and FIXTURES_FILE.stat().st_size < 50_000
    licence = (STRIPE_DATA / "LICENSE").read_text()
    assert "The MIT License" in licence and "Stripe, Inc." in licence
    readme = (STRIPE_DATA / "README.md").read_text()
    assert "github.com/stripe/openapi" in readme and spec()["info"]["version"] in readme
    assert "scripts/refresh_stripe_spec.py" in readme


def test_the_script_keeps_what_the_standin_serves_and_reproduces_the_subset_from_it(tmp_path):
    refresh = script()
    assert set(refresh.OPERATIONS) == set(OPERATIONS) and set(refresh.RESOURCES) == set(RESOURCES)

    assert refresh.main([str(STRIPE_DATA), "--out", str(tmp_path)]) == 0

    # The subset is closed: the script run on it makes it again, byte for byte.
    for name in ("spec3.subset.yaml", "fixtures3.subset.json", "LICENSE"):
        assert (tmp_path / name).read_bytes() == (STRIPE_DATA / name).read_bytes(), name


@pytest.mark.skipif(not (FULL / "spec3.yaml").exists(), reason=f"no full copy of Stripe's spec at {FULL}")
def test_the_subset_is_what_the_script_makes_from_the_full_spec_beside_the_checkout(tmp_path):
    assert script().main([str(FULL), "--out", str(tmp_path)]) == 0
    for name in ("spec3.subset.yaml", "fixtures3.subset.json", "LICENSE", "README.md"):
        assert (tmp_path / name).read_bytes() == (STRIPE_DATA / name).read_bytes(), (
            f"{name} differs from what {FULL} gives: run scripts/refresh_stripe_spec.py {FULL} and commit"
        )
