"""The manifests of deploy/k8s and the strict schemas of ../shared/schemas, loaded once."""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path
from typing import Any

import jsonschema
import jsonschema.protocols
import pytest

from tests.deploy.rules import Doc, load_docs

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
SCHEMAS = REPO.parent / "shared" / "schemas"

# Kinds the shared schemas do not cover; each is checked by a rule of its own instead
# (rules.virtual_service_errors cross-checks it against the Rollout and the Services).
NO_SCHEMA = {"networking.istio.io/v1beta1/VirtualService"}


def manifest_paths() -> list[Path]:
    return sorted(K8S.glob("*.yaml"))


@functools.cache
def _docs() -> tuple[Doc, ...]:
    return tuple(load_docs(manifest_paths()))


@pytest.fixture
def docs() -> list[Doc]:
    """Fresh copies of every manifest document (tests may mutate them)."""
    return [Doc(d.path, d.index, json.loads(json.dumps(d.body))) for d in _docs()]


def only(docs: list[Doc], kind: str, name: str | None = None) -> Doc:
    """The one document of ``kind`` (and ``name``)."""
    found = [d for d in docs if d.kind == kind and (name is None or d.name == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {[str(d) for d in found]}"
    return found[0]


@functools.cache
def schema_index() -> dict[str, str]:
    if not (SCHEMAS / "index.json").is_file():
        pytest.fail(f"strict schemas not found at {SCHEMAS}: the repo must sit beside shared/")
    index: dict[str, str] = json.loads((SCHEMAS / "index.json").read_text())["schemas"]
    return index


@functools.cache
def validator(type_key: str) -> jsonschema.protocols.Validator:
    """The strict schema for `apiVersion/kind`, with the Draft its `$schema` names."""
    schema: dict[str, Any] = json.loads((SCHEMAS / schema_index()[type_key]).read_text())
    assert "$schema" in schema, f"{type_key}: schema names no draft"
    cls = jsonschema.validators.validator_for(schema)
    assert cls.META_SCHEMA["$id"].rstrip("#") == schema["$schema"].rstrip("#"), (
        f"{type_key}: no validator for {schema['$schema']}"
    )
    cls.check_schema(schema)
    instance: jsonschema.protocols.Validator = cls(schema)
    return instance


def schema_errors(doc: Doc) -> list[str]:
    """Schema violations of one document, as `path: message` lines."""
    found = validator(doc.type_key).iter_errors(doc.body)
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in found]


PROMTOOL_MISSING = (
    "promtool not found: install the Debian package `prometheus` (apt-get install -y "
    "prometheus; `make test` does it) so promtool checks the config and the PromQL"
)


def promtool() -> str | None:
    """`promtool` from the Debian package `prometheus`, when installed."""
    return shutil.which("promtool") or (
        "/usr/bin/promtool" if Path("/usr/bin/promtool").exists() else None
    )
