"""Refresh the part of Stripe's OpenAPI spec and fixtures that the tests use.

    python scripts/refresh_stripe_spec.py [SOURCE_DIR] [--out tests/data/stripe]

SOURCE_DIR (default ../shared/stripe beside the checkout) holds a full copy of
Stripe's public OpenAPI repository's files (github.com/stripe/openapi,
`openapi/spec3.yaml` and `openapi/fixtures3.json`, MIT licence, see LICENSE).
The tests need only a small part of them (the 4 MB spec would not belong in the
repository), so this script keeps:

- the operations in OPERATIONS (what the Stripe stand-in, tests/stripe_standin.py,
  serves and the payouts code calls), each whole;
- the resources in RESOURCES (the objects the stand-in builds and answers) and
  every schema reachable from them or from the operations through `$ref`;
- any other Stripe resource reached that way (a schema with `x-resourceId`:
  charge, customer, payment_intent, ...) as a stub that names it, so that every
  `$ref` still resolves without pulling in half of Stripe's API;
- the fixtures (example objects) of RESOURCES.

It writes spec3.subset.yaml, fixtures3.subset.json, LICENSE and README.md to
--out. Run on its own output it reproduces it (the subset is closed), which
tests/payouts/test_stripe_reference.py checks. After a change here, in the
stand-in's routes or in the Stripe calls of payouts/, run it again and commit.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = ROOT.parent / "shared" / "stripe"
DEFAULT_OUT = ROOT / "tests" / "data" / "stripe"
SPEC, FIXTURES = "spec3.subset.yaml", "fixtures3.subset.json"

# (method, Stripe's path template): the stand-in serves exactly these (OPERATIONS in tests/stripe_standin.py).
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
# The objects the stand-in builds from Stripe's fixtures (RESOURCES in tests/stripe_standin.py), plus Stripe's error.
RESOURCES: tuple[str, ...] = ("account", "account_link", "balance", "event", "transfer", "transfer_reversal")
SCHEMAS: tuple[str, ...] = (*RESOURCES, "error")
STUB = "x-stubbed-by-subset"
REF = "#/components/schemas/"


def refs(node: Any) -> set[str]:
    """The names of the component schemas that a node refers to, at any depth."""
    found: set[str] = set()
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            ref = item.get("$ref")
            if isinstance(ref, str):
                if not ref.startswith(REF):
                    raise ValueError(f"unexpected $ref {ref!r}: only {REF}... is handled")
                found.add(ref[len(REF) :])
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


def stub(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    """What stands for a Stripe resource outside the subset: its name, no fields."""
    return {
        "description": (
            f"Stripe's `{name}` object, left out of this subset (scripts/refresh_stripe_spec.py keeps only "
            "the resources the tests use). See the full spec at github.com/stripe/openapi."
        ),
        "title": schema.get("title", name),
        "type": "object",
        "x-resourceId": schema.get("x-resourceId", name),
        STUB: True,
    }


def spec_subset(spec: dict[str, Any]) -> dict[str, Any]:
    schemas: dict[str, Any] = spec["components"]["schemas"]
    paths: dict[str, dict[str, Any]] = {}
    for method, template in OPERATIONS:
        operation = spec["paths"].get(template, {}).get(method.lower())
        if operation is None:
            raise KeyError(f"{method} {template} is not in the source spec")
        paths.setdefault(template, {})[method.lower()] = operation

    kept: dict[str, Any] = {}
    todo = set(SCHEMAS) | refs(paths)
    while todo:
        name = todo.pop()
        if name in kept:
            continue
        if name not in schemas:
            raise KeyError(f"$ref to {name!r}, which the source spec does not define")
        schema = schemas[name]
        if schema.get(STUB) or ("x-resourceId" in schema and name not in SCHEMAS):
            kept[name] = stub(name, schema)
            continue
        kept[name] = schema
        todo |= refs(schema)

    out = {key: value for key, value in spec.items() if key not in ("paths", "components")}
    out["paths"] = {template: paths[template] for template in sorted(paths)}
    out["components"] = {
        **{key: value for key, value in spec["components"].items() if key != "schemas"},
        "schemas": {name: kept[name] for name in sorted(kept)},
    }
    return out


def fixtures_subset(fixtures: dict[str, Any]) -> dict[str, Any]:
    resources = fixtures["resources"]
    missing = [name for name in RESOURCES if name not in resources]
    if missing:
        raise KeyError(f"the source fixtures have no {missing}")
    return {"resources": {name: resources[name] for name in RESOURCES}}


def dump_spec(spec: dict[str, Any]) -> str:
    header = (
        "# A subset of Stripe's OpenAPI spec (github.com/stripe/openapi, openapi/spec3.yaml; MIT licence,\n"
        "# see LICENSE beside this file). Made by scripts/refresh_stripe_spec.py: do not edit by hand.\n"
    )
    return header + yaml.safe_dump(spec, sort_keys=False, allow_unicode=True, width=100)


def dump_fixtures(fixtures: dict[str, Any]) -> str:
    return json.dumps(fixtures, indent=2, ensure_ascii=False) + "\n"


def readme(spec: dict[str, Any], sources: dict[str, bytes]) -> str:
    schemas = spec["components"]["schemas"]
    stubs = sorted(name for name, schema in schemas.items() if schema.get(STUB))
    full = sorted(name for name in schemas if name not in stubs)
    operations = "\n".join(f"  - `{method} {template}`" for method, template in OPERATIONS)
    digests = "\n".join(
        f"| `{name}` | `{hashlib.sha256(data).hexdigest()}` | {len(data):,} |" for name, data in sources.items()
    )
    return f"""# Stripe reference data (a subset)

Made by `scripts/refresh_stripe_spec.py`; do not edit by hand.

The part of Stripe's OpenAPI spec and fixtures that the tests use, taken from
Stripe's public OpenAPI repository, [github.com/stripe/openapi](https://github.com/stripe/openapi)
(`openapi/spec3.yaml` and `openapi/fixtures3.json`), under the MIT licence: see
[LICENSE](LICENSE), Copyright (c) 2011- Stripe, Inc.

Stripe cannot be reached from the test machines. The tests talk to a local
stand-in (`tests/stripe_standin.py`) over real HTTP through the `stripe`
library; the stand-in builds its objects from `{FIXTURES}`, and the tests check
what it answers and what the payouts code sends against `{SPEC}`, so that the
shapes cannot drift from the real API's.

- API version: `{spec["info"]["version"]}` (`info.version` of the spec).
- Operations, each whole:
{operations}
- Resources with every schema they reach through `$ref`: {", ".join(f"`{n}`" for n in SCHEMAS)}
  ({len(full)} schemas in all).
- Other Stripe resources they refer to are stubs (`{STUB}: true`), so that every
  `$ref` resolves: {", ".join(f"`{n}`" for n in stubs)}.
- Fixtures (`fixtures3.json` carries no version; it may be newer than the
  spec): {", ".join(f"`{n}`" for n in RESOURCES)}.

Extracted from:

| file | sha256 | bytes |
|---|---|---|
{digests}

## Refresh

With a full copy of Stripe's `spec3.yaml` and `fixtures3.json` (and its
`LICENSE`) in a folder, by default `../shared/stripe` beside the checkout:

```sh
.venv/bin/python scripts/refresh_stripe_spec.py [FOLDER]
.venv/bin/python -m pytest tests/payouts/test_stripe_reference.py tests/payouts/test_stripe_standin.py
```

When the stand-in serves a new operation or builds a new object, add it to
`OPERATIONS` or `RESOURCES` both in the script and in `tests/stripe_standin.py`,
and run the script again; `tests/payouts/test_stripe_reference.py` fails until
the three agree. When the payouts code calls an operation the stand-in does not
serve, `tests/payouts/test_spec_conformance.py` says so.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", nargs="?", type=Path, default=DEFAULT_SOURCE, help="folder with spec3.yaml etc.")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the subset goes")
    args = parser.parse_args(argv)
    source: Path = args.source
    out: Path = args.out

    spec_file = next((source / n for n in ("spec3.yaml", SPEC) if (source / n).exists()), None)
    fixtures_file = next((source / n for n in ("fixtures3.json", FIXTURES) if (source / n).exists()), None)
    if spec_file is None or fixtures_file is None:
        print(f"{source} has no spec3.yaml and fixtures3.json", file=sys.stderr)
        return 2
    spec_bytes, fixtures_bytes = spec_file.read_bytes(), fixtures_file.read_bytes()
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    spec = spec_subset(yaml.load(spec_bytes, Loader=loader))  # noqa: S506 - a safe loader, chosen above
    fixtures = fixtures_subset(json.loads(fixtures_bytes))

    out.mkdir(parents=True, exist_ok=True)
    (out / SPEC).write_text(dump_spec(spec), encoding="utf-8")
    (out / FIXTURES).write_text(dump_fixtures(fixtures), encoding="utf-8")
    if (source / "LICENSE").exists() and (source / "LICENSE").resolve() != (out / "LICENSE").resolve():
        shutil.copyfile(source / "LICENSE", out / "LICENSE")
    if not (out / "LICENSE").exists():
        print(f"warning: no LICENSE in {source}; Stripe's MIT licence must travel with the files", file=sys.stderr)
    if spec_file.name == "spec3.yaml":  # from a full copy: say which one
        sources = {spec_file.name: spec_bytes, fixtures_file.name: fixtures_bytes}
        (out / "README.md").write_text(readme(spec, sources), encoding="utf-8")
    sizes = ", ".join(f"{n} {(out / n).stat().st_size:,} bytes" for n in (SPEC, FIXTURES))
    print(f"wrote {out}: {sizes}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
