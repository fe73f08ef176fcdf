"""Provider-level conformance: the upstream flagd-testbed suites, run through the real
``openfeature-provider-flagd==0.6.1`` against our daemon (``python -m flagd start``), for the
resolver modes ``rpc`` and ``in-process``. The ``file`` mode (the provider reading the
launchpad's flag files, no daemon involved) runs too, as a check of the harness and of the
test data.

Run on its own (the provider's generated protobuf modules clash with ``ripcord_pb``)::

    .venv/bin/pytest tests/provider

Every Gherkin pickle tagged with a resolver mode becomes one test ``<mode>:<file>:<line>:<name>``
(see suite.py). Tests for excluded tags are reported as skipped with the reason from
EXCLUSIONS below; KNOWN_DEVIATIONS are strict xfails (they fail the run if they start
passing, so the table cannot go stale). A pass count per resolver mode is printed at the end.
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import pytest

from .launchpad import Launchpad, Profile, combine_flag_files, http_status
from .steps import STEP_DEFS, World, find_step, isolated_flagd_env, run_step, starts_provider
from .suite import (
    FILE,
    FLAGS_DIR,
    IN_PROCESS,
    MODES,
    RPC,
    Case,
    Exclusion,
    Scenario,
    Selection,
    load_scenarios,
    select,
)

PROVIDER_ONLY = True  # Exclusion.provider_scenarios_only

# Tag -> reason. Applies to every resolver mode (rpc, in-process, file) unless ``modes`` says
# otherwise.
EXCLUSIONS: tuple[Exclusion, ...] = (
    Exclusion(
        "fractional-v1",
        "legacy float bucketing; neither our daemon nor the 0.6.1 provider implements it "
        "(SOURCE.md: run exactly one fractional version)",
    ),
    Exclusion(
        "fractional-v2",
        "in-process and file evaluation happen in the provider (openfeature-flagd-core 2.0.0), "
        "which implements fractional v3 only (spec E.4); v2 examples run in RPC mode against a "
        "daemon started with --fractional v2",
        modes=frozenset({IN_PROCESS, FILE}),
    ),
    Exclusion(
        "grace",
        "file mode: the file connector has no STALE state (a missing file is an ERROR at once); "
        "upstream excludes it for file mode too",
        modes=frozenset({FILE}),
    ),
    Exclusion(
        "targetURI",
        "the Python provider has no targetUri option (spec E.1); upstream runs it through envoy",
    ),
    Exclusion("unixsocket", "the Python provider has no socketPath option (spec E.1)"),
    Exclusion(
        "customCert",
        "needs TLS on the daemon's ports (launchpad ssl.json + testbed certs); not in this "
        "daemon yet",
        provider_scenarios_only=PROVIDER_ONLY,
    ),
    Exclusion(
        "forbidden",
        "needs a server answering PERMISSION_DENIED (upstream: envoy on :9212 in front of "
        "flagd); not part of the daemon under test",
        provider_scenarios_only=PROVIDER_ONLY,
    ),
    Exclusion(
        "deprecated",
        "superseded by @no-default-variant, which expects the opposite outcome for the same "
        "flags (reason DEFAULT instead of ERROR/FLAG_NOT_FOUND); upstream's RPC run excludes it "
        "too",
    ),
)

# "<mode>:<file>:<line>" or "<file>:<line>" -> reason. Strict xfail: deviations of the
# provider (not of our daemon) from the testbed, re-checked on every run.
_DEFAULTS_CHANGED = (
    "provider 0.6.1 changed this default (testbed table: retryBackoffMaxMs 12000, "
    "retryGracePeriod 5; provider: 5000 and 10), following flagd PR 2029 (spec E.1, E.6.3)"
)
KNOWN_DEVIATIONS: dict[str, str] = {
    "config.feature:71": _DEFAULTS_CHANGED,  # Default Config, retryBackoffMaxMs = 12000
    "config.feature:72": _DEFAULTS_CHANGED,  # Default Config, retryGracePeriod = 5
}

SELECTIONS: dict[str, Selection] = {
    mode: select(load_scenarios(), mode, EXCLUSIONS, KNOWN_DEVIATIONS, starts_provider)
    for mode in MODES
}


def _params() -> list[object]:
    params: list[object] = []
    for mode in MODES:
        # RPC @fractional-v2 rows need a daemon started with --fractional v2: keep them
        # together (per feature) so the daemon switches profile once, not per outline
        for case in sorted(
            SELECTIONS[mode].all,
            key=lambda c: (
                c.scenario.feature,
                mode == RPC and "fractional-v2" in c.scenario.tags,
                c.scenario.line,
            ),
        ):
            marks: list[pytest.MarkDecorator] = []
            if case.excluded_by:
                reason = "; ".join(f"@{ex.tag}: {ex.reason}" for ex in case.excluded_by)
                marks.append(pytest.mark.skip(reason=f"excluded {reason}"))
            elif case.known_deviation:
                marks.append(pytest.mark.xfail(reason=case.known_deviation, strict=True))
            params.append(pytest.param(case, id=case.id, marks=marks))
    return params


@pytest.mark.parametrize("case", _params())
def test_scenario(case: Case, request: pytest.FixtureRequest) -> None:
    launchpad: Launchpad | None = (
        request.getfixturevalue("launchpad") if starts_provider(case.scenario) else None
    )
    world = World(mode=case.mode, launchpad=launchpad, scenario=case.scenario)
    with isolated_flagd_env():
        try:
            for number, s in enumerate(case.scenario.steps, start=1):
                try:
                    run_step(world, s)
                except Exception as err:
                    detail = f"step {number} '{s.keyword_type}: {s.text}' failed: {err}"
                    if launchpad is not None:
                        detail += "\n" + launchpad.log_tail(15)
                    raise AssertionError(detail) from err
        finally:
            world.close()


# --------------------------------------------------------------------------- self-checks
# These run without a daemon and keep the harness honest.


def _included() -> list[Case]:
    return [case for mode in MODES for case in SELECTIONS[mode].included]


def test_every_included_step_has_exactly_one_definition() -> None:
    problems = sorted(
        {
            f"{len(find_step(s.text))} definitions: {s.text!r} ({case.scenario.key})"
            for case in _included()
            for s in case.scenario.steps
            if len(find_step(s.text)) != 1
        }
    )
    assert not problems, "undefined or ambiguous steps:\n" + "\n".join(problems)


def test_every_step_definition_is_used() -> None:
    texts = {s.text for case in _included() for s in case.scenario.steps}
    unused = [d.pattern.pattern for d in STEP_DEFS if not any(d.match(t) for t in texts)]
    # only steps of scenarios we do not run may be unused
    assert unused == [r"the client should be in (?P<status>\w+) state"], unused  # @forbidden


def test_outlines_are_expanded_with_examples_tags() -> None:
    scenarios = load_scenarios()
    by_feature: dict[str, list[Scenario]] = {}
    for scenario in scenarios:
        by_feature.setdefault(scenario.feature, []).append(scenario)
    assert len(by_feature) == 11, sorted(by_feature)
    # no placeholder survives expansion (the targetURI scenarios, excluded, use a literal
    # "<port>" outside of any outline)
    leftovers = [
        (case.id, s.text)
        for case in _included()
        for s in case.scenario.steps
        if re.search(r"<[\w ]+>", s.text)
    ]
    assert not leftovers, leftovers
    # Examples-block tags reach the rows: "Fractional operator shorthand" has one Examples
    # block per hash version with different expectations for jon@company.com.
    shorthand = [
        sc
        for sc in by_feature["targeting.feature"]
        if sc.name == "Fractional operator shorthand"
        and any("jon@company.com" in s.text for s in sc.steps)
    ]
    versions = {
        tag: next(s.text for s in sc.steps if s.text.startswith("the resolved details value"))
        for sc in shorthand
        for tag in sc.tags
        if tag.startswith("fractional-v")
    }
    assert versions == {
        "fractional-v1": 'the resolved details value should be "heads"',
        "fractional-v2": 'the resolved details value should be "heads"',
        "fractional-v3": 'the resolved details value should be "tails"',
    }
    # Background steps are prepended to every pickle of a feature
    assert all(
        sc.steps[0].text == 'an option "cache" of type "CacheType" with value "disabled"'
        for sc in by_feature["evaluation.feature"]
    )
    # rows of a tagged Examples block carry its tag: the "ssl" connection rows are excluded
    ssl_rows = [sc for sc in by_feature["connection.feature"] if "customCert" in sc.tags]
    assert ssl_rows and all(
        any(ex.tag == "customCert" for ex in case.excluded_by)
        for case in [c for m in MODES for c in SELECTIONS[m].all]
        if case.scenario in ssl_rows
    )


def test_selection_sanity() -> None:
    for mode in MODES:
        included = SELECTIONS[mode].included
        assert all(mode in case.scenario.tags for case in included)
        assert not any("fractional-v1" in case.scenario.tags for case in included)
        assert not any({"targetURI", "unixsocket"} & case.scenario.tags for case in included)
        assert len(included) > 100, (mode, len(included))
    # one fractional version per mode for the same outline rows
    in_process = SELECTIONS[IN_PROCESS].included
    assert not any("fractional-v2" in case.scenario.tags for case in in_process)
    assert any("fractional-v3" in case.scenario.tags for case in in_process)
    rpc_features = {case.scenario.feature for case in SELECTIONS[RPC].included}
    assert "metadata.feature" not in rpc_features  # tagged @in-process only
    assert "rpc-caching.feature" in rpc_features
    # config-only scenarios stay in even when tagged with a provider-only exclusion
    assert any(
        "forbidden" in case.scenario.tags and case.scenario.feature == "config.feature"
        for case in SELECTIONS[RPC].included
    )


def test_exclusion_tables_refer_to_existing_tags_and_scenarios() -> None:
    all_tags = {tag for sc in load_scenarios() for tag in sc.tags}
    assert {ex.tag for ex in EXCLUSIONS} <= all_tags
    keys = {sc.key for sc in load_scenarios()}
    keys |= {f"{mode}:{key}" for mode in MODES for key in keys}
    assert set(KNOWN_DEVIATIONS) <= keys
    used = {case.known_deviation for mode in MODES for case in SELECTIONS[mode].included}
    assert set(KNOWN_DEVIATIONS.values()) <= used


def test_launchpad_merge_and_change(tmp_path_factory: pytest.TempPathFactory) -> None:
    pad = Launchpad(tmp_path_factory.mktemp("launchpad-selfcheck"))
    merged = combine_flag_files(pad.raw_dir)
    assert merged == combine_flag_files(FLAGS_DIR)
    flags = merged["flags"]
    # $ref target lives in evaluator-refs.json, the referencing flags elsewhere
    assert "is_ballmer" in merged["$evaluators"]
    assert any('"$ref": "is_ballmer"' in str(f).replace("'", '"') for f in flags.values())
    # selector-* files are not merged; the DISABLED copy of cross-flagset-flag wins
    assert "selector-flag" not in flags
    assert flags["cross-flagset-flag"]["state"] == "DISABLED"
    assert "metadata" not in merged
    for name in ("changing-flag", "boolean-flag", "flagd-context-aware", "metadata-flag"):
        assert name in flags
    assert (pad.raw_dir / "selector-flags.json").exists()
    assert sorted(p.name for p in pad.configs_dir.iterdir()) == [
        "default.json",
        "metadata.json",
        "ssl.json",
        "sync-payload.json",
    ]

    def merged_variant() -> str:
        data = json.loads(pad.merged_file.read_text(encoding="utf-8"))
        return str(data["flags"]["changing-flag"]["defaultVariant"])

    assert merged_variant() == "foo"
    assert pad.change() == "bar"
    assert merged_variant() == "bar"
    assert pad.change() == "foo"
    assert merged_variant() == "foo"


def test_daemon_protobufs_are_not_imported() -> None:
    # The provider's generated modules and ours register the same proto symbols.
    clashing = sorted(m for m in sys.modules if m.split(".")[0] in ("ripcord_pb", "flagd"))
    assert not clashing, clashing


def test_launchpad_process_control(tmp_path_factory: pytest.TempPathFactory) -> None:
    """start / reuse / restart-after-N-seconds / profile switch / stop, against a stand-in."""
    fake = Path(__file__).with_name("fake_daemon.py")
    pad = Launchpad(tmp_path_factory.mktemp("launchpad-fake"), (sys.executable, str(fake)))
    try:
        default = Profile("default")
        ports = pad.ensure_running(default)
        assert http_status(f"http://127.0.0.1:{ports.management}/readyz") == 200
        assert pad.ensure_running(default) == ports and pad.starts == 1  # reused

        pad.restart_after(1)  # kill now, back on the same ports after 1 s
        assert http_status(f"http://127.0.0.1:{ports.management}/readyz") is None
        assert not pad.merged_file.exists()  # upstream deletes it too (file-mode "outage")
        deadline = time.monotonic() + 10
        while http_status(f"http://127.0.0.1:{ports.management}/readyz") != 200:
            assert time.monotonic() < deadline, pad.log_tail()
            time.sleep(0.05)
        assert pad.starts == 2 and pad.current_ports() == ports and pad.merged_file.exists()
        assert pad.stop_records[-1].how == "SIGKILL"

        pad.restart_after(1)  # a start before the delay is over cancels the delayed restart
        fresh = pad.ensure_running(default)
        time.sleep(1.5)
        assert pad.starts == 3 and pad.current_ports() == fresh and not pad.restart_errors

        v2 = pad.ensure_running(Profile("default", ("--fractional", "v2")))  # profile switch
        assert pad.starts == 4 and v2 != fresh
        assert (pad.stop_records[-1].how, pad.stop_records[-1].returncode) == ("SIGTERM", 0)
        pad.ensure_running(Profile("metadata"))
        assert pad.starts == 5
    finally:
        pad.stop()
    assert (pad.stop_records[-1].how, pad.stop_records[-1].returncode) == ("SIGTERM", 0)
    assert pad.current_ports() is None
