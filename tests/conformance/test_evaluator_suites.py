"""The upstream flagd-testbed evaluator suites, run against our evaluator with our own steps.

Suites: ``../shared/conformance/flagd-testbed/evaluator/gherkin/*.feature`` with flags from
``evaluator/flags/testkit-flags.json`` (read in place, never copied; see SOURCE.md there).
The official ``gherkin-official`` pickle compiler expands Scenario Outlines: every Examples
row becomes one test carrying the union of feature, scenario and Examples tags.

The evaluator suites have no ``@fractional-v3`` examples, so the ``@fractional-v2`` /
``@fractional-v3`` scenarios of the provider-level ``gherkin/targeting.feature`` (flags:
``flags/custom-ops.json``) run here too, through the same steps.

Compile modes: every untagged scenario runs with ``fractional="v3"`` (our default);
``@fractional-v2`` examples run with ``"v2"``, ``@fractional-v3`` ones with ``"v3"``; the
untagged scenarios of ``fractional.feature`` (nested rules, operator errors) hold for both
recipes and also run with ``"v2"``.

Exclusions (each pickle listed by ``excluded()`` with its reason):
- ``@fractional-v1``: the legacy float bucketing of flagd <= 0.14 is not implemented
  (spec D.3: we serve v2 or v3 only).
- ``gherkin/targeting.feature`` scenarios without a v2/v3 tag: provider-level duplicates of
  the evaluator suites that need the launchpad's merged flag files; the provider suites
  (tests/provider) run them against the daemon.

Run as a script for a per-suite pass count: ``python tests/conformance/test_evaluator_suites.py``.
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal

import pytest
from gherkin.parser import Parser
from gherkin.pickles.compiler import Compiler

from flagd.definitions import parse_document
from flagd.evaluator import CompiledFlag, compile_flag, resolve
from flagd.model import Flag, FlagType, Resolution

FractionalVersion = Literal["v2", "v3"]

REPO = Path(__file__).resolve().parents[2]
TESTBED = REPO.parent / "shared" / "conformance" / "flagd-testbed"
EVALUATOR_FEATURES = TESTBED / "evaluator" / "gherkin"
EVALUATOR_FLAGS = TESTBED / "evaluator" / "flags" / "testkit-flags.json"
PROVIDER_TARGETING = TESTBED / "gherkin" / "targeting.feature"
CUSTOM_OPS_FLAGS = TESTBED / "flags" / "custom-ops.json"

VERSION_TAGS: dict[str, FractionalVersion | None] = {
    "fractional-v1": None,
    "fractional-v2": "v2",
    "fractional-v3": "v3",
}


@dataclass(frozen=True)
class Case:
    """One pickle to run in one fractional compile mode."""

    feature: str
    name: str
    line: int
    tags: frozenset[str]
    steps: tuple[tuple[str, tuple[tuple[str, ...], ...] | None], ...]
    flags_file: Path
    mode: FractionalVersion

    @property
    def id(self) -> str:
        slug = re.sub(r"[^A-Za-z0-9]+", "-", self.name).strip("-").lower()
        return f"{self.feature.removesuffix('.feature')}:{self.line}:{slug}-{self.mode}"


@dataclass(frozen=True)
class Excluded:
    feature: str
    name: str
    line: int
    reason: str


def _pickles(path: Path) -> Iterator[tuple[str, int, frozenset[str], tuple[Any, ...]]]:
    # The parser's TypedDicts are stricter than the data it accepts; treat it as plain JSON.
    document: Any = Parser().parse(path.read_text(encoding="utf-8"))
    document["uri"] = str(path)
    lines = _pickle_lines(document)
    pickles: list[dict[str, Any]] = Compiler().compile(document)  # type: ignore[assignment]
    for pickle in pickles:
        tags = frozenset(tag["name"].lstrip("@") for tag in pickle["tags"])
        steps = []
        for step in pickle["steps"]:
            table = None
            if "argument" in step and "dataTable" in step["argument"]:
                rows = step["argument"]["dataTable"]["rows"]
                table = tuple(tuple(cell["value"] for cell in row["cells"]) for row in rows)
            steps.append((step["text"], table))
        line = lines.get(pickle["astNodeIds"][-1], 0)
        yield pickle["name"], line, tags, tuple(steps)


def _pickle_lines(document: dict[str, Any]) -> dict[str, int]:
    """AST node id -> source line, so an outline row is named by its Examples line."""
    lines: dict[str, int] = {}

    def visit(node: Any) -> None:
        if isinstance(node, dict):
            if "id" in node and "location" in node:
                lines[node["id"]] = node["location"]["line"]
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    visit(document)
    return lines


@cache
def collect() -> tuple[tuple[Case, ...], tuple[Excluded, ...]]:
    """All cases to run and all excluded pickles, from the suites on disk."""
    cases: list[Case] = []
    excluded: list[Excluded] = []
    sources = [(p, EVALUATOR_FLAGS, False) for p in sorted(EVALUATOR_FEATURES.glob("*.feature"))]
    sources.append((PROVIDER_TARGETING, CUSTOM_OPS_FLAGS, True))
    for path, flags_file, versioned_only in sources:
        label = path.relative_to(TESTBED).as_posix().replace("evaluator/gherkin/", "")
        for name, line, tags, steps in _pickles(path):
            tagged = [VERSION_TAGS[t] for t in tags if t in VERSION_TAGS]
            if "fractional-v1" in tags:
                reason = "@fractional-v1: legacy float bucketing is not implemented (spec D.3)"
                excluded.append(Excluded(label, name, line, reason))
                continue
            if versioned_only and not tagged:
                reason = "provider-level scenario without a v2/v3 tag: run by tests/provider"
                excluded.append(Excluded(label, name, line, reason))
                continue
            modes: list[FractionalVersion]
            if tagged:
                modes = [m for m in tagged if m is not None]
            elif path.name == "fractional.feature":
                modes = ["v3", "v2"]
            else:
                modes = ["v3"]
            for mode in modes:
                cases.append(Case(label, name, line, tags, steps, flags_file, mode))
    return tuple(cases), tuple(excluded)


# --------------------------------------------------------------------------- steps


@cache
def _flags(flags_file: Path) -> dict[str, Flag]:
    return parse_document(flags_file.read_text(encoding="utf-8"), source=str(flags_file)).flags


@cache
def _compiled(flags_file: Path, mode: FractionalVersion) -> dict[str, CompiledFlag]:
    return {key: compile_flag(f, mode) for key, f in _flags(flags_file).items()}


FLAG_TYPES = {
    "Boolean": FlagType.BOOLEAN,
    "String": FlagType.STRING,
    "Integer": FlagType.INTEGER,
    "Float": FlagType.FLOAT,
    "Object": FlagType.OBJECT,
}


def typed(kind: str, text: str) -> Any:
    """A Gherkin cell as the value of the named type."""
    if kind == "Boolean":
        return text == "true"
    if kind == "Integer":
        return int(text)
    if kind == "Float":
        return float(text)
    if kind == "Object":
        return json.loads(text.replace('\\"', '"'))  # table cells escape quotes as \"
    return text  # String: verbatim, escape sequences like A\u0000B stay literal


@dataclass
class World:
    case: Case
    flag_key: str = ""
    kind: str = "String"
    fallback: Any = None
    context: dict[str, Any] = field(default_factory=dict)
    result: Resolution | None = None

    @property
    def resolution(self) -> Resolution:
        assert self.result is not None, "the flag was not evaluated"
        return self.result


Step = Callable[[World, re.Match[str], tuple[tuple[str, ...], ...] | None], None]
STEPS: list[tuple[re.Pattern[str], Step]] = []


def step(pattern: str) -> Callable[[Step], Step]:
    def register(fn: Step) -> Step:
        STEPS.append((re.compile(f"^{pattern}$"), fn))
        return fn

    return register


@step(r"an evaluator|a stable flagd provider|an option .*")
def _no_setup(world: World, match: re.Match[str], table: Any) -> None:
    """Our evaluator needs no setup; provider options (cache) do not apply to it."""


@step(r'a (\w+)-flag with key "([^"]*)" and a (?:fallback|default) value "(.*)"')
def _flag(world: World, match: re.Match[str], table: Any) -> None:
    world.kind, world.flag_key = match[1], match[2]
    world.fallback = typed(world.kind, match[3])


@step(r'a context containing a key "([^"]*)", with type "(\w+)" and with value "(.*)"')
def _context_key(world: World, match: re.Match[str], table: Any) -> None:
    world.context[match[1]] = typed(match[2], match[3])


@step(r'a context containing a targeting key with value "(.*)"')
def _targeting_key(world: World, match: re.Match[str], table: Any) -> None:
    world.context["targetingKey"] = match[1]


@step(
    r'a context containing a nested property with outer key "([^"]*)" '
    r'and inner key "([^"]*)", with value "(.*)"'
)
def _nested(world: World, match: re.Match[str], table: Any) -> None:
    world.context.setdefault(match[1], {})[match[2]] = match[3]


@step(r"the flag was evaluated with details")
def _evaluate(world: World, match: re.Match[str], table: Any) -> None:
    flags = _compiled(world.case.flags_file, world.case.mode)
    world.result = resolve(flags.get(world.flag_key), world.context, FLAG_TYPES[world.kind])


@step(r'the resolved details value should be "(.*)"')
def _value(world: World, match: re.Match[str], table: Any) -> None:
    res = world.resolution
    # The provider substitutes the caller's fallback whenever no variant was resolved.
    actual = res.value if res.variant is not None else world.fallback
    expected = typed(world.kind, match[1])
    assert actual == expected and type(actual) is type(expected), (actual, expected, res)


@step(r'the reason should be "(\w+)"')
def _reason(world: World, match: re.Match[str], table: Any) -> None:
    assert world.resolution.reason.value == match[1], world.resolution


@step(r'the error-code should be "(\w*)"')
def _error_code(world: World, match: re.Match[str], table: Any) -> None:
    error = world.resolution.error
    assert (error.value if error else "") == match[1], world.resolution


@step(r"the resolved metadata should contain")
def _metadata(world: World, match: re.Match[str], table: Any) -> None:
    assert table is not None
    header, *rows = table
    assert header == ("key", "metadata_type", "value")
    for key, kind, text in rows:
        actual = world.resolution.metadata.get(key)
        expected = typed(kind, text)
        assert actual == expected and type(actual) is type(expected), (key, actual, expected)


@step(r"the resolved metadata is empty")
def _no_metadata(world: World, match: re.Match[str], table: Any) -> None:
    assert world.resolution.metadata == {}, world.resolution.metadata


def run_case(case: Case) -> None:
    """Run every step of ``case``; an unknown step fails the case."""
    world = World(case)
    for text, table in case.steps:
        for pattern, fn in STEPS:
            match = pattern.match(text)
            if match:
                fn(world, match, table)
                break
        else:
            raise AssertionError(f"no step definition for: {text!r}")


# --------------------------------------------------------------------------- pytest

if not EVALUATOR_FEATURES.is_dir():
    # A missing testbed must fail the run, not quietly skip the conformance suites.
    raise RuntimeError(f"testbed not found at {TESTBED}: the repo must sit beside shared/")

CASES, EXCLUDED = collect()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_scenario(case: Case) -> None:
    run_case(case)


def test_suites_found() -> None:
    """Guard against a silently empty run (moved files, a parser change)."""
    features = {c.feature for c in CASES}
    assert len(features) == 12, sorted(features)  # 11 evaluator suites + provider targeting
    assert {c.mode for c in CASES} == {"v2", "v3"}
    assert all(e.reason for e in EXCLUDED)
    assert sum(1 for e in EXCLUDED if "fractional-v1" in e.reason) > 0


def main() -> int:
    counts: Counter[tuple[str, str, str]] = Counter()
    for case in CASES:
        try:
            run_case(case)
        except AssertionError as exc:
            counts[(case.feature, case.mode, "fail")] += 1
            print(f"FAIL {case.id}: {exc}")
        else:
            counts[(case.feature, case.mode, "pass")] += 1
    for feature, mode in sorted({(f, m) for f, m, _ in counts}):
        ok, bad = counts[(feature, mode, "pass")], counts[(feature, mode, "fail")]
        print(f"{feature:34} {mode}: {ok:3} passed {bad:3} failed")
    passed = sum(n for (_, _, r), n in counts.items() if r == "pass")
    print(f"total: {passed} passed, {len(CASES) - passed} failed, {len(EXCLUDED)} excluded")
    for reason, n in Counter(e.reason for e in EXCLUDED).items():
        print(f"  excluded {n:3}: {reason}")
    return 0 if passed == len(CASES) else 1


if __name__ == "__main__":
    sys.exit(main())
