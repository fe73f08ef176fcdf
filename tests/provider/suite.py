"""Loading and selecting the upstream flagd-testbed Gherkin suites.

The feature files are read in place from ``<repo>/../shared/conformance/flagd-testbed/gherkin``
(third-party test data, see SOURCE.md next to them; never copied into this repository).

Parsing and Scenario Outline expansion are done by the official Gherkin implementation
(``gherkin-official``): its pickle compiler expands every Examples row into its own
scenario, prepends Background steps, substitutes ``<placeholders>`` in step texts, names
and tables, and gives every pickle the union of the Feature, Rule, Scenario *and Examples*
tags. That is exactly the model Cucumber uses, so tags on Examples blocks (e.g.
``@fractional-v3``) select individual example rows.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gherkin.parser import Parser
from gherkin.pickles.compiler import Compiler

REPO_ROOT = Path(__file__).resolve().parents[2]
TESTBED_DIR = REPO_ROOT.parent / "shared" / "conformance" / "flagd-testbed"
FEATURES_DIR = TESTBED_DIR / "gherkin"
FLAGS_DIR = TESTBED_DIR / "flags"
LAUNCHPAD_CONFIGS_DIR = TESTBED_DIR / "launchpad" / "configs"

RPC = "rpc"
IN_PROCESS = "in-process"
FILE = "file"  # bonus: the provider's offline mode on the launchpad's files, no daemon
MODES: tuple[str, ...] = (RPC, IN_PROCESS, FILE)


@dataclass(frozen=True)
class Step:
    keyword_type: str  # "Context" (Given), "Action" (When), "Outcome" (Then)
    text: str
    table: tuple[tuple[str, ...], ...] | None = None


@dataclass(frozen=True)
class Scenario:
    """One compiled pickle: a plain Scenario, or one Examples row of a Scenario Outline."""

    feature: str  # file name, e.g. "evaluation.feature"
    line: int  # line of the Scenario, or of the Examples row for outlines
    name: str
    tags: frozenset[str]  # without the leading "@"
    steps: tuple[Step, ...]

    @property
    def key(self) -> str:
        return f"{self.feature}:{self.line}"


@dataclass(frozen=True)
class Exclusion:
    """A tag we do not run, and why.

    ``modes``: the resolver modes the exclusion applies to. ``provider_scenarios_only``: the
    exclusion only applies to scenarios that start a provider; scenarios that only parse
    provider options (config.feature) do not need the capability the tag stands for.
    """

    tag: str
    reason: str
    modes: frozenset[str] = frozenset(MODES)
    provider_scenarios_only: bool = False


@dataclass(frozen=True)
class Case:
    mode: str
    scenario: Scenario
    excluded_by: tuple[Exclusion, ...] = ()
    known_deviation: str | None = None

    @property
    def id(self) -> str:
        return f"{self.mode}:{self.scenario.key}:{self.scenario.name}"


@dataclass
class Selection:
    included: list[Case] = field(default_factory=list)
    excluded: list[Case] = field(default_factory=list)

    @property
    def all(self) -> list[Case]:
        return self.included + self.excluded


def _compile(path: Path) -> list[dict[str, Any]]:
    document: Any = Parser().parse(path.read_text(encoding="utf-8"))
    document["uri"] = str(path)
    pickles: list[dict[str, Any]] = Compiler().compile(document)  # type: ignore[assignment]
    return pickles


def _to_scenario(feature: str, pickle: dict[str, Any]) -> Scenario:
    steps: list[Step] = []
    for raw in pickle["steps"]:
        table = None
        argument = raw.get("argument") or {}
        if "dataTable" in argument:
            table = tuple(
                tuple(cell["value"] for cell in row["cells"])
                for row in argument["dataTable"]["rows"]
            )
        steps.append(Step(keyword_type=raw.get("type", ""), text=raw["text"], table=table))
    return Scenario(
        feature=feature,
        line=int(pickle["location"]["line"]),
        name=pickle["name"],
        tags=frozenset(tag["name"].lstrip("@") for tag in pickle["tags"]),
        steps=tuple(steps),
    )


@functools.cache
def load_scenarios(features_dir: Path = FEATURES_DIR) -> tuple[Scenario, ...]:
    files = sorted(features_dir.glob("*.feature"))
    if not files:
        raise FileNotFoundError(
            f"no *.feature files under {features_dir}: the provider conformance suite reads the "
            "flagd-testbed copy in ../shared relative to the repository root"
        )
    scenarios: list[Scenario] = []
    for path in files:
        scenarios.extend(_to_scenario(path.name, pickle) for pickle in _compile(path))
    return tuple(scenarios)


def select(
    scenarios: Iterable[Scenario],
    mode: str,
    exclusions: Sequence[Exclusion],
    known_deviations: dict[str, str],
    starts_provider: Callable[[Scenario], bool],
) -> Selection:
    """Upstream selection rule (python-sdk-contrib tests/e2e/testfilter.py): a scenario runs in
    a resolver mode when it carries the mode's tag, and none of the excluded tags.
    ``starts_provider`` decides whether ``provider_scenarios_only`` exclusions apply."""
    selection = Selection()
    for scenario in scenarios:
        if mode not in scenario.tags:
            continue  # not applicable to this resolver at all
        hits = tuple(
            ex
            for ex in exclusions
            if ex.tag in scenario.tags
            and mode in ex.modes
            and (not ex.provider_scenarios_only or starts_provider(scenario))
        )
        case = Case(
            mode=mode,
            scenario=scenario,
            excluded_by=hits,
            known_deviation=known_deviations.get(f"{mode}:{scenario.key}")
            or known_deviations.get(scenario.key),
        )
        (selection.excluded if hits else selection.included).append(case)
    return selection
