"""Tests for flagd/definitions.py: parsing, validation, `$ref`, and the SyncFlags payload."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from flagd.definitions import (
    DefinitionError,
    ParsedDocument,
    load_file,
    parse_document,
    to_sync_payload,
)
from flagd.model import Flag

REPO = Path(__file__).resolve().parent.parent
TESTBED = REPO.parent / "shared" / "conformance" / "flagd-testbed"
CONFORMANCE_FILES = [
    *sorted((TESTBED / "flags").glob("*.json")),
    TESTBED / "evaluator" / "flags" / "testkit-flags.json",
]
PAYMENTS = REPO / "deploy" / "flags" / "payments.flagd.json"

# The testbed is reference data the tests must have: a missing copy fails, never skips.
needs_testbed = pytest.mark.usefixtures("shared_dir")


def _doc(flags: Any, **top: Any) -> str:
    return json.dumps({"flags": flags, **top})


def _bool_flag(**extra: Any) -> dict[str, Any]:
    return {
        "state": "ENABLED",
        "variants": {"on": True, "off": False},
        "defaultVariant": "off",
        **extra,
    }


def _error(text: str | bytes, fmt: str | None = "json", source: str = "t.json") -> DefinitionError:
    with pytest.raises(DefinitionError) as info:
        parse_document(text, source=source, fmt=fmt)
    return info.value


# --------------------------------------------------------------------------- conformance files


@needs_testbed
def test_conformance_file_list_is_complete() -> None:
    # Guards against the glob silently matching nothing (which would make the next test vacuous).
    assert len(CONFORMANCE_FILES) == 11


@needs_testbed
@pytest.mark.parametrize("path", CONFORMANCE_FILES, ids=lambda p: p.name)
def test_conformance_files_parse(path: Path) -> None:
    raw = json.loads(path.read_text())
    doc = load_file(path)
    assert list(doc.flags) == list(raw["flags"])  # every flag, in file order
    for key, flag in doc.flags.items():
        assert flag.key == key
        assert flag.source == str(path)
        assert flag.variants == raw["flags"][key]["variants"]


@needs_testbed
def test_testkit_refs_are_expanded() -> None:
    doc = load_file(TESTBED / "evaluator" / "flags" / "testkit-flags.json")
    evaluators = json.loads((TESTBED / "evaluator/flags/testkit-flags.json").read_text())[
        "$evaluators"
    ]
    blob = json.dumps([f.targeting for f in doc.flags.values()])
    for name in evaluators:
        assert json.dumps({"$ref": name}) not in blob


@needs_testbed
def test_evaluator_refs_file_whitespace_variants_and_missing_ref() -> None:
    doc = load_file(TESTBED / "flags" / "evaluator-refs.json")
    rule = {"==": ["ballmer@macrosoft.com", {"var": ["email"]}]}
    assert doc.flags["some-email-targeted-flag"].targeting == {"if": [rule, "hi", "bye"]}
    assert doc.flags["some-other-email-targeted-flag"].targeting == {"if": [rule, "yes", "no"]}
    for key in (
        "ref-whitespace-compact-flag",
        "ref-whitespace-space-after-colon-flag",
        "ref-whitespace-space-around-colon-flag",
    ):
        assert doc.flags[key].targeting == {"if": [rule, "hi", "bye"]}, key
    missing = doc.flags["ref-to-nonexistent-evaluator-flag"].targeting
    assert missing == {"if": [{"$ref": "nonexistent_evaluator"}, "hit", "miss"]}


@needs_testbed
def test_zero_flags_ref_survives_alone_and_expands_when_merged() -> None:
    # zero-flags.json refers to `is_ballmer`, defined only in evaluator-refs.json: the testbed
    # deep-merges all files first. Alone, the ref must survive (C.3: later PARSE_ERROR).
    zero_path = TESTBED / "flags" / "zero-flags.json"
    alone = load_file(zero_path)
    targeted = alone.flags["boolean-targeted-zero-flag"].targeting
    assert targeted == {"if": [{"$ref": "is_ballmer"}, "zero"]}

    merged = json.loads(zero_path.read_text())
    merged["$evaluators"] = json.loads((TESTBED / "flags" / "evaluator-refs.json").read_text())[
        "$evaluators"
    ]
    doc = parse_document(json.dumps(merged), source="merged")
    assert doc.flags["boolean-targeted-zero-flag"].targeting == {
        "if": [{"==": ["ballmer@macrosoft.com", {"var": ["email"]}]}, "zero"]
    }
    assert doc.flags["float-zero-flag"].variants == {"zero": 0.0, "non-zero": 1.0}


@needs_testbed
def test_combined_metadata_flag_keys_win() -> None:
    doc = load_file(TESTBED / "flags" / "selector-flag-combined-metadata.json")
    combined = doc.flags["combined-metadata-flag"].metadata
    assert combined["string"] == "a" and combined["integer"] == 1
    assert combined["flag-set-string"] == "c"
    only_set = doc.flags["only-set-metadata-flag"].metadata
    assert only_set["string"] == "b" and only_set["boolean"] is False
    assert doc.metadata["integer"] == 2
    assert doc.flags["combined-metadata-flag"].targeting is None  # {} means no targeting


@needs_testbed
def test_no_default_variant_cases() -> None:
    doc = load_file(TESTBED / "flags" / "testing-flags.json")
    assert doc.flags["null-default-flag"].default_variant is None
    assert doc.flags["undefined-default-flag"].default_variant is None
    assert (
        parse_document(_doc({"f": _bool_flag(defaultVariant="")}), source="s")
        .flags["f"]
        .default_variant
        is None
    )


# --------------------------------------------------------------------------- YAML


YAML_DOC = """
$schema: https://flagd.dev/schema/v0/flags.json
metadata:
  flagSetId: payments
  version: "3"
flags:
  f:
    state: ENABLED
    variants:
      on: true
      off: false
    defaultVariant: off
    targeting:
      if:
        - $ref: beta
        - on
    metadata:
      removal: 2026-01-01
      weight: 1.5
  g:
    state: DISABLED
    variants: {a: {x: 1}, b: {x: 2}}
$evaluators:
  beta:
    in: [{var: email}, [a@x.io, b@x.io]]
"""

JSON_DOC = {
    "$schema": "https://flagd.dev/schema/v0/flags.json",
    "metadata": {"flagSetId": "payments", "version": "3"},
    "flags": {
        "f": {
            "state": "ENABLED",
            "variants": {"on": True, "off": False},
            "defaultVariant": "off",
            "targeting": {"if": [{"$ref": "beta"}, "on"]},
            "metadata": {"removal": "2026-01-01", "weight": 1.5},
        },
        "g": {"state": "DISABLED", "variants": {"a": {"x": 1}, "b": {"x": 2}}},
    },
    "$evaluators": {"beta": {"in": [{"var": "email"}, ["a@x.io", "b@x.io"]]}},
}


def test_yaml_equals_json() -> None:
    from_yaml = parse_document(YAML_DOC, source="s", fmt="yaml")
    from_json = parse_document(json.dumps(JSON_DOC), source="s", fmt="json")
    assert from_yaml == from_json
    # on/off stay strings (YAML 1.1 would make them booleans) and dates stay strings.
    assert from_yaml.flags["f"].default_variant == "off"
    assert from_yaml.flags["f"].metadata["removal"] == "2026-01-01"
    assert from_yaml.flags["f"].targeting == {
        "if": [{"in": [{"var": "email"}, ["a@x.io", "b@x.io"]]}, "on"]
    }


def test_format_guessing_and_load_file_extensions(tmp_path: Path) -> None:
    assert parse_document(YAML_DOC, source="s") == parse_document(json.dumps(JSON_DOC), source="s")
    (tmp_path / "a.yml").write_text(YAML_DOC)
    (tmp_path / "a.yaml").write_text(YAML_DOC)
    (tmp_path / "a.json").write_bytes(b"\xef\xbb\xbf" + json.dumps(JSON_DOC).encode())  # BOM
    docs = [load_file(tmp_path / n, source="s") for n in ("a.yml", "a.yaml", "a.json")]
    assert docs[0] == docs[1] == docs[2]
    # A YAML file named .json is parsed as JSON only, so it fails.
    (tmp_path / "wrong.json").write_text(YAML_DOC)
    with pytest.raises(DefinitionError, match="invalid JSON at line"):
        load_file(tmp_path / "wrong.json")


def test_yaml_unsafe_tags_rejected() -> None:
    err = _error("flags: !!python/object/apply:os.system ['true']\n", fmt="yaml")
    assert err.path == "$" and "invalid YAML" in err.message


def test_yaml_non_string_key_and_non_json_values_rejected() -> None:
    err = _error("flags:\n  f:\n    state: ENABLED\n    variants: {1: a, 2: b}\n", fmt="yaml")
    assert err.path == '$.flags["f"].variants' and "quote it" in err.message
    err = _error("flags:\n  f:\n    state: ENABLED\n    variants: {a: .nan}\n", fmt="yaml")
    assert err.path == '$.flags["f"].variants["a"]'
    err = _error("flags:\n  f:\n    state: ENABLED\n    variants: {a: !!binary aGk=}\n", fmt="yaml")
    assert err.path == '$.flags["f"].variants["a"]' and "bytes" in err.message


def test_yaml_alias_bomb_is_bounded() -> None:
    lines = ['a0: &a0 ["x","x","x","x","x","x","x","x","x","x"]']
    for i in range(1, 9):
        lines.append(f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 10) + "]")
    lines.append("flags: {}")
    err = _error("\n".join(lines), fmt="yaml")
    assert "too large" in err.message


# --------------------------------------------------------------------------- $ref


def test_ref_with_odd_whitespace_and_nesting_rules() -> None:
    text = """{"flags": {"f": {"state": "ENABLED", "variants": {"a": "a", "b": "b"},
      "defaultVariant": "a",
      "targeting": {"or": [ {  "$ref"
          :
        "x"  }, {"$ref":"y"}, {"$ref": "x", "extra": 1}, [{"$ref": "x"}] ]}}},
      "$evaluators": {"x": {"==": [1, 1]}, "y": {"!": {"$ref": "x"}}}}"""
    targeting = parse_document(text, source="s").flags["f"].targeting
    assert targeting == {
        "or": [
            {"==": [1, 1]},
            {"!": {"$ref": "x"}},  # evaluators do not nest: the inner ref is left alone
            {"$ref": "x", "extra": 1},  # not exactly {"$ref": name}: untouched
            [{"==": [1, 1]}],
        ]
    }


def test_expanded_refs_are_independent_copies() -> None:
    text = _doc(
        {
            "f": _bool_flag(targeting={"if": [{"$ref": "r"}, "on"]}),
            "g": _bool_flag(targeting={"if": [{"$ref": "r"}, "on"]}),
        },
        **{"$evaluators": {"r": {"in": ["a", ["a"]]}}},
    )
    doc = parse_document(text, source="s")
    assert doc.flags["f"].targeting == doc.flags["g"].targeting
    targeting = doc.flags["f"].targeting
    assert targeting is not None
    targeting["if"][0]["in"][1].append("b")
    assert doc.flags["g"].targeting == {"if": [{"in": ["a", ["a"]]}, "on"]}


def test_unknown_ref_survives() -> None:
    text = _doc(
        {"f": _bool_flag(targeting={"if": [{"$ref": "nope"}, "on"]})},
        **{"$evaluators": {"other": {"==": [1, 1]}}},
    )
    flag = parse_document(text, source="s").flags["f"]
    assert flag.targeting == {"if": [{"$ref": "nope"}, "on"]}


# --------------------------------------------------------------------------- invalid documents


def test_bad_json_reports_line_and_column() -> None:
    err = _error('{\n  "flags": {\n    "f": ,\n  }\n}', source="deploy/flags/x.json")
    assert err.source == "deploy/flags/x.json" and err.path == "$"
    assert "line 3, column 10" in err.message
    assert str(err).startswith("deploy/flags/x.json: $: invalid JSON at line 3, column 10")
    # Guessing: text that looks like JSON reports the JSON error, not YAML's.
    assert "invalid JSON at line 3" in _error('{\n  "flags": {\n    "f": ,\n', fmt=None).message


def test_nan_is_not_json() -> None:
    err = _error('{"flags": {"f": {"state": "ENABLED", "variants": {"a": NaN}}}}')
    assert err.path == "$" and "NaN" in err.message


@pytest.mark.parametrize(
    ("doc", "path", "fragment"),
    [
        ("[]", "$", '"flags"'),
        ('{"metadata": {}}', "$", 'missing "flags"'),
        ('{"flags": "x"}', "$.flags", "must be an object"),
        ('{"flags": {"": {}}}', "$.flags", "must not be empty"),
        ('{"flags": {"f": []}}', '$.flags["f"]', "must be an object"),
        ('{"flags": {"f": {"variants": {"a": 1}}}}', '$.flags["f"].state', "missing"),
        (
            '{"flags": {"f": {"state": "enabled", "variants": {"a": 1}}}}',
            '$.flags["f"].state',
            '"enabled" is not a valid state: use "ENABLED" or "DISABLED"',
        ),
        ('{"flags": {"f": {"state": "ENABLED"}}}', '$.flags["f"].variants', "missing"),
        (
            '{"flags": {"f": {"state": "ENABLED", "variants": {}}}}',
            '$.flags["f"].variants',
            "must not be empty",
        ),
        (
            '{"flags": {"f": {"state": "ENABLED", "variants": [1, 2]}}}',
            '$.flags["f"].variants',
            "must be an object",
        ),
        (
            '{"flags": {"f": {"state": "ENABLED", "variants": {"a": true, "b": 1}}}}',
            '$.flags["f"].variants["b"]',
            "is a number but 'a' is a boolean",
        ),
        (
            '{"flags": {"f": {"state": "ENABLED", "variants": {"a": 1, "b": false}}}}',
            '$.flags["f"].variants["b"]',
            "is a boolean but 'a' is a number",
        ),
        (
            '{"flags": {"f": {"state": "ENABLED", "variants": {"a": "x", "b": {"y": 1}}}}}',
            '$.flags["f"].variants["b"]',
            "one type",
        ),
        (
            '{"flags": {"f": {"state": "ENABLED", "variants": {"a": [1], "b": [2]}}}}',
            '$.flags["f"].variants["a"]',
            "not array",
        ),
        (
            '{"flags": {"f": {"state": "ENABLED", "variants": {"a": null}}}}',
            '$.flags["f"].variants["a"]',
            "not null",
        ),
        (
            '{"flags": {"f": {"state": "ENABLED", "variants": {"on": true, "off": false},'
            ' "defaultVariant": "blue"}}}',
            '$.flags["f"].defaultVariant',
            '"blue" is not one of the variants (on, off)',
        ),
        (
            '{"flags": {"f": {"state": "ENABLED", "variants": {"true": true},'
            ' "defaultVariant": true}}}',
            '$.flags["f"].defaultVariant',
            "quote it",
        ),
        (
            '{"flags": {"f": {"state": "ENABLED", "variants": {"a": 1}, "targeting": "a"}}}',
            '$.flags["f"].targeting',
            "must be a JsonLogic object",
        ),
        (
            '{"flags": {"f": {"state": "ENABLED", "variants": {"a": 1}, "targeting": [1]}}}',
            '$.flags["f"].targeting',
            "not array",
        ),
        (
            '{"flags": {"f": {"state": "ENABLED", "variants": {"a": 1},'
            ' "metadata": {"owner": {"team": "x"}}}}}',
            '$.flags["f"].metadata["owner"]',
            "string, number or boolean, not object",
        ),
        (
            '{"flags": {"f": {"state": "ENABLED", "variants": {"a": 1}, "metadata": {"n": null}}}}',
            '$.flags["f"].metadata["n"]',
            "not null",
        ),
        (
            '{"flags": {"f": {"state": "ENABLED", "variants": {"a": 1}, "metadata": [1]}}}',
            '$.flags["f"].metadata',
            "must be an object",
        ),
        ('{"flags": {}, "metadata": {"tags": ["a"]}}', '$.metadata["tags"]', "not array"),
        ('{"flags": {}, "$evaluators": []}', '$["$evaluators"]', "must be an object"),
        (
            '{"flags": [{"state": "ENABLED", "variants": {"a": 1}}]}',
            "$.flags[0].key",
            'non-empty string "key"',
        ),
        (
            '{"flags": [{"key": "a", "state": "ENABLED", "variants": {"a": 1}},'
            ' {"key": "a", "state": "ENABLED", "variants": {"a": 1}}]}',
            "$.flags[1].key",
            "duplicate",
        ),
        (
            '{"flags": [{"key": "a", "state": "ON", "variants": {"a": 1}}]}',
            "$.flags[0].state",
            "not a valid state",
        ),
    ],
)
def test_invalid_documents(doc: str, path: str, fragment: str) -> None:
    err = _error(doc, source="src.json")
    assert (err.source, err.path) == ("src.json", path)
    assert fragment in err.message
    assert str(err) == f"src.json: {path}: {err.message}"
    assert isinstance(err, ValueError)


def test_error_on_second_flag_names_that_flag() -> None:
    text = _doc({"good": _bool_flag(), "my-flag": _bool_flag(defaultVariant="blue")})
    assert _error(text).path == '$.flags["my-flag"].defaultVariant'


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    with pytest.raises(DefinitionError) as info:
        load_file(missing)
    assert info.value.source == str(missing)
    assert str(missing) in info.value.message
    with pytest.raises(DefinitionError) as info:
        load_file(tmp_path)  # a directory is unreadable as a file
    assert str(tmp_path) in str(info.value)


def test_invalid_utf8_rejected() -> None:
    assert "UTF-8" in _error(b'{"flags": {"\xff": 1}}').message


# --------------------------------------------------------------------------- lenient parts


def test_lenient_about_unknown_keys_and_array_form() -> None:
    text = json.dumps(
        {
            "$schema": "https://flagd.dev/schema/v0/flags.json",
            "comment": "top-level extra keys are ignored",
            "flags": [
                {
                    "key": "a",
                    "state": "ENABLED",
                    "variants": {"x": 1, "y": 2.5},
                    "defaultVariant": None,
                    "description": "ignored",
                    "targeting": {},
                },
                {"key": "b", "state": "DISABLED", "variants": {"x": "1"}},
            ],
        }
    )
    doc = parse_document(text, source="s")
    assert list(doc.flags) == ["a", "b"]
    assert doc.flags["a"] == Flag(
        key="a",
        state="ENABLED",
        variants={"x": 1, "y": 2.5},
        default_variant=None,
        targeting=None,
        source="s",
    )
    assert doc.metadata == {}


# --------------------------------------------------------------------------- sync payload


def test_sync_payload_shape() -> None:
    flags = [
        Flag(
            key="a",
            state="ENABLED",
            variants={"on": True},
            default_variant=None,
            targeting=None,
            source="file:a",
        ),
        Flag(
            key="b",
            state="DISABLED",
            variants={"x": 1},
            default_variant="x",
            targeting={"if": [True, "x"]},
            source="file:b",
            metadata={"flagSetId": "s"},
        ),
    ]
    text = to_sync_payload(flags)
    assert " " not in text  # compact separators
    assert json.loads(text) == {
        "flags": {
            "a": {
                "state": "ENABLED",
                "defaultVariant": "",
                "variants": {"on": True},
                "source": "file:a",
            },
            "b": {
                "state": "DISABLED",
                "defaultVariant": "x",
                "variants": {"x": 1},
                "targeting": {"if": [True, "x"]},
                "source": "file:b",
                "metadata": {"flagSetId": "s"},
            },
        }
    }
    assert json.loads(to_sync_payload([])) == {"flags": {}}


def test_sync_payload_later_flag_with_same_key_wins() -> None:
    one = Flag(
        key="k",
        state="ENABLED",
        variants={"a": 1},
        default_variant="a",
        targeting=None,
        source="first",
    )
    two = Flag(
        key="k",
        state="ENABLED",
        variants={"a": 2},
        default_variant="a",
        targeting=None,
        source="second",
    )
    assert json.loads(to_sync_payload([one, two]))["flags"]["k"]["source"] == "second"


def _round_trip(doc: ParsedDocument, source: str) -> ParsedDocument:
    return parse_document(to_sync_payload(doc.flags.values()), source=source)


@needs_testbed
@pytest.mark.parametrize("path", CONFORMANCE_FILES, ids=lambda p: p.name)
def test_round_trip_conformance_files(path: Path) -> None:
    doc = load_file(path)
    again = _round_trip(doc, str(path))
    assert again.flags == doc.flags
    assert list(again.flags) == list(doc.flags)


def test_round_trip_yaml_doc() -> None:
    doc = parse_document(YAML_DOC, source="s", fmt="yaml")
    assert _round_trip(doc, "s").flags == doc.flags


def _flagd_core() -> Any:
    core = pytest.importorskip("openfeature.contrib.tools.flagd.core")
    return core.FlagdCore()


@needs_testbed
@pytest.mark.parametrize("path", CONFORMANCE_FILES, ids=lambda p: p.name)
def test_payload_accepted_by_flagd_core(path: Path) -> None:
    core = _flagd_core()
    doc = load_file(path)
    core.set_flags(to_sync_payload(doc.flags.values()))
    store = core._flag_store  # no public accessor for the parsed flags
    assert set(store.flags) == set(doc.flags)
    for key, flag in doc.flags.items():
        theirs = store.flags[key]
        assert theirs.state == flag.state
        assert theirs.variants == flag.variants
        assert theirs.default_variant == flag.default_variant
        assert theirs.targeting == flag.targeting
        assert dict(theirs.metadata or {}) == flag.metadata


# --------------------------------------------------------------------------- deploy/flags


PAYMENT_KEYS = [
    "payments.new-router.circuit-open",
    "payments.new-router.enabled",
    "payments.dynamic-currency.enabled",
    "payments.fx-provider.kill-switch",
    "payments.fx-backfill.enabled",
    "payments.new-router.shadow",  # issue 4: the optional shadow comparison
]


def test_payments_flag_file() -> None:
    doc = load_file(PAYMENTS)
    assert sorted(doc.flags) == sorted(PAYMENT_KEYS)
    assert doc.metadata["flagSetId"] == "payments" and "version" in doc.metadata
    for flag in doc.flags.values():
        assert flag.state == "ENABLED"
        assert set(flag.variants.values()) == {True, False}
        assert flag.variants[flag.default_variant or ""] is False  # everything starts off
        assert flag.flag_set_id == "payments"
        for meta in ("kind", "owner", "removal", "description"):
            assert isinstance(flag.metadata.get(meta), str) and flag.metadata[meta], meta
        assert flag.metadata["kind"] in ("ops", "release", "experiment")
    kinds = {k: f.metadata["kind"] for k, f in doc.flags.items()}
    assert kinds["payments.new-router.enabled"] == "release"
    assert kinds["payments.dynamic-currency.enabled"] == "experiment"
    assert kinds["payments.new-router.circuit-open"] == "ops"


def test_payments_flags_evaluate_off_in_flagd_core() -> None:
    """The real in-process evaluator agrees: release at 0%, experiment only for opted-in users."""
    pytest.importorskip("openfeature.contrib.tools.flagd.core")
    from openfeature.evaluation_context import EvaluationContext
    from openfeature.flag_evaluation import Reason

    core = _flagd_core()
    core.set_flags(to_sync_payload(load_file(PAYMENTS).flags.values()))
    for i in range(50):
        ctx = EvaluationContext(targeting_key=f"merchant-{i}", attributes={"dcc_opt_in": True})
        release = core.resolve_boolean_value("payments.new-router.enabled", True, ctx)
        assert (release.value, release.variant, release.reason) == (
            False,
            "off",
            Reason.TARGETING_MATCH,
        )
        dcc = core.resolve_boolean_value("payments.dynamic-currency.enabled", True, ctx)
        assert (dcc.value, dcc.variant, dcc.reason) == (False, "control", Reason.TARGETING_MATCH)
    not_opted = EvaluationContext(targeting_key="m", attributes={"dcc_opt_in": False})
    dcc = core.resolve_boolean_value("payments.dynamic-currency.enabled", True, not_opted)
    assert (dcc.value, dcc.variant, dcc.reason) == (False, "control", Reason.DEFAULT)
    no_key = core.resolve_boolean_value("payments.new-router.enabled", True, EvaluationContext())
    assert (no_key.value, no_key.reason) == (False, Reason.DEFAULT)
