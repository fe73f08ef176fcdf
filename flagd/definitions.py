"""Flag-definition documents: decode, validate, expand `$ref`s, re-serialise for SyncFlags.

The contract is `shared/spec/flagd-wire-protocol.md` section C (document shape), B.3 (the
`flag_configuration` payload) and A.10 (a bad payload is rejected whole).

Strictness policy. flagd rejects a payload only when it cannot be decoded or a
`defaultVariant` names a missing variant; JSON-schema violations merely log a warning
(spec A.10). We serve the same payload to in-process providers, whose parser
(`openfeature-flagd-core` 2.0.0, spec B.3) raises on a bad `state`, empty/non-object
`variants`, non-primitive metadata or a non-object `flags`, and a flag it cannot parse
breaks *every* flag of that client. So we reject everything that would make the payload
unusable for either consumer, plus the type errors section C defines (mixed variant types,
non-object targeting), each with a message that says what to fix. We stay lenient about
keys neither consumer reads (`$schema`, unknown top-level keys, unknown per-flag keys such
as `description`): they are ignored and never re-emitted by `to_sync_payload`.
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from flagd.model import Flag, JsonValue, MetadataValue

__all__ = [
    "DefinitionError",
    "ParsedDocument",
    "load_file",
    "parse_document",
    "to_sync_payload",
]

_STATES = ("ENABLED", "DISABLED")

# Decoded documents are walked once to check they are plain JSON data. YAML aliases can
# make a tiny file describe an exponentially large tree ("billion laughs"); cap the walk.
_MAX_NODES = 1_000_000


class DefinitionError(ValueError):
    """A flag-definition document that cannot be used, with where and why."""

    def __init__(self, source: str, path: str, message: str) -> None:
        super().__init__(f"{source}: {path}: {message}")
        self.source = source
        self.path = path
        self.message = message


@dataclass(frozen=True, slots=True)
class ParsedDocument:
    """One validated document: flags in file order plus the flag-set metadata."""

    flags: dict[str, Flag] = field(default_factory=dict)
    metadata: dict[str, MetadataValue] = field(default_factory=dict)


# --------------------------------------------------------------------------- paths


def _key(path: str, name: str) -> str:
    """Path to a user-chosen key (flag key, variant, metadata key): always bracketed."""
    return f"{path}[{json.dumps(name, ensure_ascii=False)}]"


def _index(path: str, i: int) -> str:
    return f"{path}[{i}]"


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _show(value: object, limit: int = 60) -> str:
    """A short JSON rendering of a value for error messages."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------- decoding


class _YamlLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans and no timestamps.

    Stock PyYAML follows YAML 1.1, where `on`/`off`/`yes`/`no` are booleans: a flag file
    with `variants: {on: true, off: false}` and `defaultVariant: off` would silently become
    `{True: True, False: False}` / `False`. Dates like `removal: 2026-01-01` would become
    `datetime.date`, which is not JSON. JSON-only semantics are what flagd's JSON model
    expects, so only `true`/`false` are booleans and timestamps stay strings.
    Still a SafeLoader: no arbitrary object construction.
    """


_YamlLoader.yaml_implicit_resolvers = {
    first: [
        (tag, rx)
        for tag, rx in resolvers
        if tag not in ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:timestamp")
    ]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)


def _reject_constant(name: str) -> Any:
    # Python's json accepts NaN/Infinity; they are not JSON and cannot be re-emitted.
    raise ValueError(f"{name} is not valid JSON")


def _decode_json(text: str, source: str) -> Any:
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise DefinitionError(
            source,
            "$",
            f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}",
        ) from exc
    except ValueError as exc:
        raise DefinitionError(source, "$", f"invalid JSON: {exc}") from exc


def _decode_yaml(text: str, source: str) -> Any:
    try:
        return yaml.load(text, Loader=_YamlLoader)  # SafeLoader subclass: safe
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise DefinitionError(source, "$", f"invalid YAML{where}: {problem}") from exc


def _decode(text: str | bytes, source: str, fmt: str | None) -> Any:
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise DefinitionError(
                source, "$", f"not UTF-8 text (byte {exc.start}): save the file as UTF-8"
            ) from exc
    elif text.startswith("\ufeff"):
        text = text[1:]
    if fmt == "json":
        return _decode_json(text, source)
    if fmt == "yaml":
        return _decode_yaml(text, source)
    if fmt is not None:
        raise ValueError(f"fmt must be 'json', 'yaml' or None, not {fmt!r}")
    try:
        return _decode_json(text, source)
    except DefinitionError as json_error:
        try:
            return _decode_yaml(text, source)
        except DefinitionError as yaml_error:
            # Report the error of the format the author most likely meant.
            looks_json = text.lstrip()[:1] in ("{", "[")
            raise (json_error if looks_json else yaml_error) from None


_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _check_plain_data(
    value: Any, source: str, path: str, budget: list[int], level: str = "root"
) -> None:
    """Reject anything a JSON document could not contain (YAML can produce more).

    ``level`` tracks the document shape only to build the same paths as the validation
    below: schema fields are dotted (`$.flags["f"].variants`), user keys bracketed.
    """
    budget[0] -= 1
    if budget[0] < 0:
        raise DefinitionError(
            source, path, f"document is too large (more than {_MAX_NODES} values)"
        )
    if value is None or isinstance(value, bool | int | str):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise DefinitionError(source, path, f"{value} is not a JSON number")
        return
    if isinstance(value, list):
        child = "flag" if level == "flags" else "data"
        for i, item in enumerate(value):
            _check_plain_data(item, source, _index(path, i), budget, child)
        return
    if isinstance(value, dict):
        for k, item in value.items():
            if not isinstance(k, str):
                raise DefinitionError(
                    source,
                    path,
                    f"key {k!r} is a {_type_name(k)}, not a string: quote it",
                )
            dotted = level in ("root", "flag") and _IDENT.match(k) is not None
            child_path = f"{path}.{k}" if dotted else _key(path, k)
            if level == "root":
                child = "flags" if k == "flags" else "data"
            else:
                child = "flag" if level == "flags" else "data"
            _check_plain_data(item, source, child_path, budget, child)
        return
    raise DefinitionError(
        source, path, f"a {type(value).__name__} value is not allowed: use JSON types"
    )


# --------------------------------------------------------------------------- validation


def _metadata(value: Any, source: str, path: str) -> dict[str, MetadataValue]:
    if not isinstance(value, dict):
        raise DefinitionError(source, path, f"metadata must be an object, not {_type_name(value)}")
    out: dict[str, MetadataValue] = {}
    for k, v in value.items():
        if k == "":
            raise DefinitionError(source, path, "metadata keys must not be empty")
        if v is None or not isinstance(v, str | int | float | bool):
            raise DefinitionError(
                source,
                _key(path, k),
                f"metadata values must be a string, number or boolean, "
                f"not {_type_name(v)} {_show(v)}",
            )
        out[k] = v
    return out


def _variant_kind(value: Any) -> str | None:
    """The flag type a variant value belongs to, or None if it fits none (spec C.2)."""
    if isinstance(value, bool):  # before int: bool is an int subclass in Python
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    # The flagd schema (json/flags.json `objectVariants`) says `"type": "object"`, so an
    # array is not an object variant; providers' object resolution expects a Struct.
    if isinstance(value, dict):
        return "object"
    return None


def _variants(value: Any, source: str, path: str) -> dict[str, JsonValue]:
    if not isinstance(value, dict):
        raise DefinitionError(
            source,
            path,
            f"variants must be an object of name -> value, not {_type_name(value)}",
        )
    if not value:
        raise DefinitionError(source, path, "variants must not be empty: add at least one")
    first_name: str | None = None
    first_kind: str | None = None
    for name, v in value.items():
        if name == "":
            raise DefinitionError(source, path, "variant names must not be empty")
        kind = _variant_kind(v)
        if kind is None:
            raise DefinitionError(
                source,
                _key(path, name),
                f"variant values must be a boolean, string, number or object, "
                f"not {_type_name(v)} {_show(v)}",
            )
        if first_kind is None:
            first_name, first_kind = name, kind
        elif kind != first_kind:
            raise DefinitionError(
                source,
                _key(path, name),
                f"all variants of a flag must have one type: {name!r} is a {kind} but "
                f"{first_name!r} is a {first_kind}",
            )
    return dict(value)


def _expand_refs(node: Any, evaluators: dict[str, Any]) -> Any:
    """Replace every object that is exactly {"$ref": name} by that evaluator (spec C.3).

    Substituted rules are not searched again: evaluators cannot reference evaluators, so
    a `$ref` inside an evaluator stays as is (and, like a ref to a missing evaluator,
    fails at evaluation time with PARSE_ERROR). flagd and flagd-core substitute text
    evaluator by evaluator, which makes nesting order-dependent; one pass is predictable.
    """
    if isinstance(node, dict):
        if len(node) == 1 and "$ref" in node:
            name = node["$ref"]
            if isinstance(name, str) and name in evaluators:
                return copy.deepcopy(evaluators[name])
            return dict(node)
        return {k: _expand_refs(v, evaluators) for k, v in node.items()}
    if isinstance(node, list):
        return [_expand_refs(v, evaluators) for v in node]
    return node


def _flag(
    key: str,
    raw: Any,
    *,
    source: str,
    path: str,
    evaluators: dict[str, Any],
    set_metadata: dict[str, MetadataValue],
) -> Flag:
    if not isinstance(raw, dict):
        raise DefinitionError(source, path, f"a flag must be an object, not {_type_name(raw)}")
    if "state" not in raw:
        raise DefinitionError(
            source, f"{path}.state", 'missing: set "state" to "ENABLED" or "DISABLED"'
        )
    state = raw["state"]
    if state not in _STATES:
        raise DefinitionError(
            source,
            f"{path}.state",
            f'{_show(state)} is not a valid state: use "ENABLED" or "DISABLED"',
        )
    if "variants" not in raw:
        raise DefinitionError(
            source, f"{path}.variants", "missing: a flag needs at least one variant"
        )
    variants = _variants(raw["variants"], source, f"{path}.variants")

    default = raw.get("defaultVariant")
    if default == "":
        default = None  # "" means "code default", like null or missing (spec C.2)
    if default is not None:
        names = ", ".join(variants)
        if not isinstance(default, str):
            # flagd's Go model cannot unmarshal a non-string here: the payload is dropped.
            raise DefinitionError(
                source,
                f"{path}.defaultVariant",
                f"must be a variant name (a string) or null, not {_type_name(default)} "
                f"{_show(default)}: quote it; variants are ({names})",
            )
        if default not in variants:
            # The one semantic check flagd itself enforces (spec A.10).
            raise DefinitionError(
                source,
                f"{path}.defaultVariant",
                f"{_show(default)} is not one of the variants ({names})",
            )

    targeting = raw.get("targeting")
    if targeting is not None and not isinstance(targeting, dict):
        raise DefinitionError(
            source,
            f"{path}.targeting",
            f"targeting must be a JsonLogic object (or omitted), not {_type_name(targeting)} "
            f"{_show(targeting)}",
        )
    if targeting == {}:
        targeting = None  # {} means "no targeting" (spec C.2)
    if targeting is not None:
        targeting = _expand_refs(targeting, evaluators)

    metadata = dict(set_metadata)
    if "metadata" in raw and raw["metadata"] is not None:
        metadata.update(_metadata(raw["metadata"], source, f"{path}.metadata"))

    return Flag(
        key=key,
        state=state,
        variants=variants,
        default_variant=default,
        targeting=targeting,
        source=source,
        metadata=metadata,
    )


def _flag_entries(raw: Any, source: str) -> Iterator[tuple[str, str, Any]]:
    """(key, path, raw flag) for both the object form and the daemon-only array form."""
    if isinstance(raw, dict):
        for key, value in raw.items():
            if key == "":
                raise DefinitionError(source, "$.flags", "flag keys must not be empty")
            yield key, _key("$.flags", key), value
        return
    if isinstance(raw, list):
        # Daemon-only form (spec C.1): each flag carries its own "key".
        seen: dict[str, int] = {}
        for i, value in enumerate(raw):
            path = _index("$.flags", i)
            if not isinstance(value, dict):
                raise DefinitionError(
                    source, path, f"a flag must be an object, not {_type_name(value)}"
                )
            key = value.get("key")
            if not isinstance(key, str) or key == "":
                raise DefinitionError(
                    source,
                    f"{path}.key",
                    'in the array form every flag needs a non-empty string "key"',
                )
            if key in seen:
                # flagd would keep the last silently; almost certainly a copy-paste slip.
                raise DefinitionError(
                    source,
                    f"{path}.key",
                    f"duplicate flag key {_show(key)} (also at $.flags[{seen[key]}])",
                )
            seen[key] = i
            yield key, path, value
        return
    raise DefinitionError(
        source,
        "$.flags",
        f'"flags" must be an object of flag key -> flag, not {_type_name(raw)}',
    )


# --------------------------------------------------------------------------- public API


def parse_document(text: str | bytes, *, source: str, fmt: str | None = None) -> ParsedDocument:
    """Decode and validate one flag-definition document (spec C).

    ``fmt`` is "json" or "yaml"; None tries JSON, then YAML. Raises DefinitionError naming
    ``source`` and a JSON path on anything that would make the payload unusable.
    """
    doc = _decode(text, source, fmt)
    _check_plain_data(doc, source, "$", [_MAX_NODES])
    if not isinstance(doc, dict):
        raise DefinitionError(
            source,
            "$",
            f'a flag document must be an object with a "flags" key, not {_type_name(doc)}',
        )
    if "flags" not in doc:
        raise DefinitionError(
            source, "$", 'missing "flags": the document must define its flags under "flags"'
        )

    evaluators: dict[str, Any] = {}
    raw_evaluators = doc.get("$evaluators")
    if raw_evaluators is not None:
        if not isinstance(raw_evaluators, dict):
            raise DefinitionError(
                source,
                '$["$evaluators"]',
                f"$evaluators must be an object of name -> rule, not {_type_name(raw_evaluators)}",
            )
        evaluators = raw_evaluators

    set_metadata: dict[str, MetadataValue] = {}
    if doc.get("metadata") is not None:
        set_metadata = _metadata(doc["metadata"], source, "$.metadata")

    flags: dict[str, Flag] = {}
    for key, path, raw in _flag_entries(doc["flags"], source):
        flags[key] = _flag(
            key,
            raw,
            source=source,
            path=path,
            evaluators=evaluators,
            set_metadata=set_metadata,
        )
    return ParsedDocument(flags=flags, metadata=set_metadata)


_FORMATS = {".json": "json", ".yaml": "yaml", ".yml": "yaml"}


def load_file(path: str | Path, *, source: str | None = None) -> ParsedDocument:
    """Read and parse a flag file; the format comes from the extension (.json/.yaml/.yml).

    ``source`` defaults to the path as given. An unknown extension is guessed (JSON first).
    """
    name = str(path)
    src = name if source is None else source
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise DefinitionError(
            src, "$", f"cannot read flag file {name}: {exc.strerror or exc}"
        ) from exc
    fmt = _FORMATS.get(Path(path).suffix.lower())
    return parse_document(data, source=src, fmt=fmt)


def to_sync_payload(flags: Iterable[Flag]) -> str:
    """The SyncFlags/FetchAllFlags `flag_configuration` JSON text (spec B.3).

    Keyed by flag key; like flagd's `convertMap`, a later flag with the same key replaces
    an earlier one, so pass flags in ascending source priority (or select one flag set).
    """
    out: dict[str, dict[str, Any]] = {}
    for flag in flags:
        entry: dict[str, Any] = {
            "state": flag.state,
            "defaultVariant": flag.default_variant or "",
            "variants": flag.variants,
        }
        if flag.targeting is not None:
            entry["targeting"] = flag.targeting
        entry["source"] = flag.source
        if flag.metadata:
            entry["metadata"] = flag.metadata
        out.pop(flag.key, None)  # a replaced key moves to its new position
        out[flag.key] = entry
    return json.dumps({"flags": out}, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def flag_to_json(flag: Flag) -> dict[str, Any]:
    """One flag as a flagd definition object (no key, no source): what admin writes store."""
    out: dict[str, Any] = {"state": flag.state, "variants": flag.variants}
    if flag.default_variant is not None:
        out["defaultVariant"] = flag.default_variant
    if flag.targeting is not None:
        out["targeting"] = flag.targeting
    if flag.metadata:
        out["metadata"] = flag.metadata
    return out


def parse_flag(key: str, definition: Any, *, source: str, flag_set_id: str = "") -> Flag:
    """Validate one flag definition object as if it stood alone in a document.

    ``flag_set_id`` becomes the flag-set metadata (the flag's own metadata still wins), so an
    admin write lands in the set it names. Raises DefinitionError with a `$.flags[...]` path.
    """
    doc: dict[str, Any] = {"flags": {key: definition}}
    if flag_set_id:
        doc["metadata"] = {"flagSetId": flag_set_id}
    return parse_document(json.dumps(doc), source=source, fmt="json").flags[key]
