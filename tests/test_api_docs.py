"""The project documents its own API, in the repository: the generated reference is what the code
generates now, and no document points outside the repository."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest
import yaml
from django.test import Client

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def api_docs() -> ModuleType:
    module_spec = importlib.util.spec_from_file_location("api_docs", ROOT / "scripts" / "api_docs.py")
    assert module_spec and module_spec.loader
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def test_the_committed_openapi_document_and_reference_are_what_the_code_generates():
    for path, text in api_docs().generate().items():
        committed = path.read_text(encoding="utf-8") if path.exists() else ""
        assert committed == text, f"{path.relative_to(ROOT)} is stale: run `make api-docs` and commit it"


@pytest.mark.django_db
def test_the_committed_openapi_document_is_the_one_the_service_serves(client: Client):
    served = yaml.safe_load(client.get("/api/schema/").content)
    assert served == yaml.safe_load((ROOT / "docs" / "openapi.yaml").read_text(encoding="utf-8"))


def test_the_reference_covers_every_endpoint_and_every_operator_command():
    reference = (ROOT / "docs" / "API_REFERENCE.md").read_text(encoding="utf-8")
    schema = yaml.safe_load((ROOT / "docs" / "openapi.yaml").read_text(encoding="utf-8"))
    for path, item in schema["paths"].items():
        for method in item:
            assert f"`{method.upper()} {path}`" in reference
    for command in ("create_bot_integration", "create_agent", "create_agents", "seed_demo", "reconcile_stripe"):
        assert f"### `{command}" in reference


def anchors(document: Path) -> set[str]:
    """GitHub's ids for a Markdown file's headings: lower case, punctuation dropped, spaces as hyphens."""
    headings = re.findall(r"^#{1,6} (.+)$", document.read_text(encoding="utf-8"), flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-") for heading in headings}


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_of_the_documents_resolves_inside_the_repository(document: Path):
    text = document.read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue  # a web address
        file, _, anchor = target.partition("#")
        resolved = (document.parent / file).resolve() if file else document
        assert resolved.is_relative_to(ROOT), f"{document.name} links outside the repository: {target}"
        assert resolved.exists(), f"{document.name} links to {target}, which does not exist"
        if anchor and resolved.suffix == ".md":
            assert anchor in anchors(resolved), f"{document.name} links to {target}: no such heading"


def test_no_document_or_module_sends_the_reader_to_the_shared_folder_for_the_contract():
    offenders = [
        str(path.relative_to(ROOT))
        for pattern in ("*.md", "*.py")
        for path in ROOT.rglob(pattern)
        if ".venv" not in path.parts
        and any(ref in path.read_text(encoding="utf-8") for ref in ("../shared/API.md", "../shared/STYLE.md"))
        and path != Path(__file__)
    ]
    assert offenders == [], "the contract is docs/API.md and the house style docs/STYLE.md, in the repository"
