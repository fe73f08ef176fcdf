"""Templates and Rollouts (spec 8, 11): loading, args, `{{args.x}}`, validation, dryRun rules."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from canary.templates import (
    AnalysisSpecError,
    AnalysisTemplate,
    check_conditions,
    load_documents,
    parse_duration,
    prepare_run,
    rollout_analyses,
    rollout_args,
    select_templates,
    substitute,
    templates_from_documents,
)
from tests.canary.replay import SPEC_YAML, spec_template, template

HASH = {"canary-hash": "7d9f8c6b5"}


def test_the_spec_template_resolves_to_its_two_gates() -> None:
    run = prepare_run(spec_template(), HASH)
    error_rate, p99 = run.metrics
    assert (error_rate.name, p99.name) == ("error-rate", "p99-latency")
    for m in run.metrics:
        assert (m.interval, m.count, m.effective_count) == (60.0, 5, 5)
        assert (m.failure_limit, m.inconclusive_limit, m.consecutive_error_limit) == (0, 1, 2)
        assert m.prometheus.address == "http://prometheus.monitoring.svc:9090"
        assert m.prometheus.timeout == 10 and not m.dry_run
    assert error_rate.success_condition == "len(result) > 0 && result[0] <= 0.01"
    assert p99.failure_condition == "len(result) > 0 && result[0] >= 0.2"
    q = error_rate.prometheus.query
    assert 'job="payment-router",rollouts_pod_template_hash="7d9f8c6b5",status!="OK"}[5m]' in q
    assert "{{" not in q and "or vector(0)" in q
    assert "histogram_quantile(0.99," in p99.prometheus.query
    assert run.args == {"canary-hash": "7d9f8c6b5", "job": "payment-router",
                        "prometheus-address": "http://prometheus.monitoring.svc:9090"}  # fmt: skip
    assert check_conditions(run) == []


def test_a_missing_required_arg_is_an_error_before_running() -> None:
    with pytest.raises(AnalysisSpecError, match=r"^args\.canary-hash was not resolved$"):
        prepare_run(spec_template(), {})


def test_supplied_args_override_defaults_and_undeclared_ones_are_ignored() -> None:
    run = prepare_run(spec_template(), {**HASH, "job": "canary-job", "unused": "x"})
    assert 'job="canary-job"' in run.metrics[0].prometheus.query
    assert "unused" not in run.args


def test_substitution_ignores_whitespace_and_escapes_for_json() -> None:
    metric = {"name": "m", "q": "{{ args.service-name }} {{args.quoted}}", "n": "{{args.count}}"}
    out = substitute(metric, {"service-name": "svc", "quoted": 'a"b\nc', "count": "3"})
    assert out == {"name": "m", "q": 'svc a"b\nc', "n": "3"}
    with pytest.raises(AnalysisSpecError, match=r"failed to resolve \{\{args\.nope\}\}"):
        substitute({"q": "{{args.nope}}"}, {})
    with pytest.raises(AnalysisSpecError, match=r"failed to resolve \{\{ inputs\.x \}\}"):
        substitute({"q": "{{ inputs.x }}"}, {"x": "1"})
    with pytest.raises(AnalysisSpecError, match="end tag"):
        substitute({"q": "sum(x{a='{{args.a'})"}, {"a": "1"})
    assert substitute({"q": 'x{a="b"}'}, {}) == {"q": 'x{a="b"}'}  # single braces are fine


def test_an_unknown_tag_makes_the_run_error() -> None:
    t = template({"name": "m", "successCondition": "result > {{args.limit}}"})
    with pytest.raises(AnalysisSpecError, match=r"^Unable to resolve metric arguments: failed"):
        prepare_run(t, {})


def test_count_and_limits_may_be_templated() -> None:
    t = template(
        {"name": "m", "interval": "{{args.every}}", "count": "{{args.count}}",
         "failureLimit": "{{args.failures}}"},
        args=[{"name": "every", "value": "30s"}, {"name": "count"}, {"name": "failures"}],
    )  # fmt: skip
    (m,) = prepare_run(t, {"count": "4", "failures": "1"}).metrics
    assert (m.interval, m.count, m.failure_limit) == (30.0, 4, 1)


def test_args_across_templates_merge() -> None:
    a = template({"name": "a"}, args=[{"name": "job", "value": "x"}, {"name": "hash"}])
    b = AnalysisTemplate("b", ({"name": "b", "provider": {"prometheus": {"query": "q"}}},),
                         args=(*template({"name": "z"}, args=[{"name": "job", "value": "x"}]).args,))  # fmt: skip
    assert prepare_run([a, b], {"hash": "h"}).args == {"job": "x", "hash": "h"}
    c = template({"name": "c"}, args=[{"name": "job", "value": "y"}])
    with pytest.raises(AnalysisSpecError, match="specified multiple times with different values"):
        prepare_run([a, c], {"hash": "h"})
    with pytest.raises(AnalysisSpecError, match="two metrics have the same name 'a'"):
        prepare_run([a, template({"name": "a"})], {"hash": "h"})


def test_secret_args_resolve_and_are_redacted() -> None:
    doc = {"kind": "AnalysisTemplate", "metadata": {"name": "s"}, "spec": {
        "args": [{"name": "token", "valueFrom": {"secretKeyRef": {"name": "prom", "key": "t"}}}],
        "metrics": [{"name": "m", "provider": {"prometheus": {
            "address": "http://p:9090", "query": "up", "headers": [
                {"key": "Authorization", "value": "Bearer {{args.token}}"}]}}}]}}  # fmt: skip
    t = AnalysisTemplate.from_document(doc)
    run = prepare_run(t, secrets={"prom": {"t": "s3cr3t"}})
    assert run.metrics[0].prometheus.headers == (("Authorization", "Bearer s3cr3t"),)
    assert run.redact("header Bearer s3cr3t refused") == "header Bearer ***** refused"
    with pytest.raises(AnalysisSpecError, match='secrets "prom" not found'):
        prepare_run(t)
    with pytest.raises(AnalysisSpecError, match="key 't' does not exist in secret 'prom'"):
        prepare_run(t, secrets={"prom": {}})


INVALID: list[tuple[dict[str, Any], str]] = [
    ({"count": 2}, "interval must be specified when count > 1"),
    (
        {"count": 2, "interval": "1m", "failureLimit": 3},
        "count must be >= failureLimit + consecutiveSuccessLimit",
    ),
    (
        {"count": 5, "interval": "1m", "failureLimit": 1, "consecutiveSuccessLimit": 5},
        "count must be >= failureLimit + consecutiveSuccessLimit",
    ),
    (
        {"count": 3, "interval": "1m", "failureLimit": -1, "consecutiveSuccessLimit": 4},
        "count must be >= consecutiveSuccessLimit",
    ),
    ({"count": 1, "inconclusiveLimit": 2}, "count must be >= inconclusiveLimit"),
    ({"failureLimit": -2}, "failureLimit must be >= -1"),
    ({"failureLimit": -1}, "failureLimit -1 requires consecutiveSuccessLimit > 0"),
    ({"inconclusiveLimit": -1}, "inconclusiveLimit must be >= 0"),
    ({"consecutiveErrorLimit": -1}, "consecutiveErrorLimit must be >= 0"),
    ({"consecutiveSuccessLimit": -1}, "consecutiveSuccessLimit must be >= 0"),
    ({"count": -1}, "count must be >= 0"),
    ({"count": "five"}, "count must be an integer"),
    ({"interval": "60"}, 'invalid interval string: time: missing unit in duration "60"'),
    ({"interval": "1d"}, "invalid interval string"),
    ({"initialDelay": "soon"}, "invalid initialDelay string"),
    ({"provider": {}}, "no provider specified"),
    (
        {"provider": {"prometheus": {"query": "q"}, "web": {"url": "u"}}},
        "multiple providers specified",
    ),
    ({"provider": {"web": {"url": "u"}}}, "provider 'web' is not supported by the local runner"),
    (
        {"provider": {"prometheus": {"query": "q", "rangeQuery": {"step": "1m"}}}},
        "rangeQuery is not supported",
    ),
    (
        {"provider": {"prometheus": {"query": "q", "timeout": "10s"}}},
        "timeout must be integer seconds",
    ),
]


@pytest.mark.parametrize(("fields", "message"), INVALID, ids=[m for _, m in INVALID])
def test_section_11_rules_make_the_spec_invalid(fields: Mapping[str, Any], message: str) -> None:
    with pytest.raises(AnalysisSpecError) as info:
        prepare_run(template({"name": "m", **fields}))
    assert str(info.value).startswith("Analysis spec invalid: metrics[0]: ")
    assert message in str(info.value)


def test_valid_limit_combinations_pass() -> None:
    ok: list[dict[str, Any]] = [{"count": 10, "interval": "1m", "failureLimit": -1, "consecutiveSuccessLimit": 5},
          {"count": 10, "interval": "1m", "failureLimit": 5, "consecutiveSuccessLimit": 5},
          {"interval": "30s"}, {"count": 1}, {"initialDelay": "2m"}]  # fmt: skip
    for fields in ok:
        prepare_run(template({"name": "m", **fields}))
    with pytest.raises(AnalysisSpecError, match="no metrics specified"):
        prepare_run(AnalysisTemplate("empty", ()))


def test_effective_count() -> None:
    def effective(**fields: Any) -> int | None:
        return prepare_run(template({"name": "m", **fields})).metrics[0].effective_count

    assert effective() == 1  # no count, no interval: exactly one measurement (5.1)
    assert effective(interval="1m") is None  # interval only: unlimited
    assert effective(interval="1m", count=0) is None
    assert effective(interval="1m", count=3) == 3


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("1m", 60), ("1h30m", 5400), ("1.5h", 5400), ("500ms", 0.5), ("0", 0),
     ("2m10s", 130), ("-1s", -1), ("1us", 1e-6)],
)  # fmt: skip
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "1", "1d", "m", "1 m", "s1"])
def test_bad_go_durations(text: str) -> None:
    with pytest.raises(ValueError, match="time: "):
        parse_duration(text)


def test_dry_run_rules_are_unanchored_regexps_that_must_match() -> None:
    t = template({"name": "error-rate"}, {"name": "p99-error"}, {"name": "latency"})
    run = prepare_run(t, dry_run=["error"])
    assert [m.dry_run for m in run.metrics] == [True, True, False]
    run = prepare_run(t, dry_run=["^lat"], measurement_retention=[("p99", 3)])
    assert [m.dry_run for m in run.metrics] == [False, False, True]
    assert [m.measurement_limit for m in run.metrics] == [10, 3, 10]
    with pytest.raises(AnalysisSpecError, match=r"dryRun\[1\]: Rule didn't match any metric"):
        prepare_run(t, dry_run=["error", "nothing"])
    with pytest.raises(AnalysisSpecError, match=r"measurementRetention\[0\]: Rule didn't match"):
        prepare_run(t, measurement_retention=[("nothing", 5)])
    with pytest.raises(AnalysisSpecError, match="duplicate rule"):
        prepare_run(t, dry_run=["error", "error"])


def test_template_dry_run_rules_come_from_the_document() -> None:
    doc = {"kind": "ClusterAnalysisTemplate", "metadata": {"name": "c"},
           "spec": {"dryRun": [{"metricName": "p99"}],
                    "metrics": [{"name": "p99", "provider": {"prometheus": {"query": "q"}}}]}}  # fmt: skip
    t = AnalysisTemplate.from_document(doc)
    assert t.kind == "ClusterAnalysisTemplate"
    assert prepare_run(t).metrics[0].dry_run


def test_the_spec_rollout_asks_for_two_step_analyses() -> None:
    docs = load_documents(SPEC_YAML)
    rollout = next(d for d in docs if d["kind"] == "Rollout")
    steps = rollout_analyses(rollout)
    assert [s.step_index for s in steps] == [2, 5]
    assert steps[0].templates == (("payment-router-slo", False),)
    args = rollout_args(steps[0], rollout, {"Latest": "abc123", "Stable": "old999"})
    assert args == {"canary-hash": "abc123"}
    chosen = select_templates(steps[0], templates_from_documents(docs))
    assert [t.name for t in chosen] == ["payment-router-slo"]
    run = prepare_run(chosen, args)
    assert 'rollouts_pod_template_hash="abc123"' in run.metrics[1].prometheus.query


def test_rollout_args_from_values_and_field_refs() -> None:
    rollout = {"kind": "Rollout", "metadata": {"name": "r", "labels": {"env": "prod"}},
               "spec": {"template": {"metadata": {"labels": {"version": "1.4.0"}}},
                        "strategy": {"canary": {"analysis": {
                            "templates": [{"templateName": "slo", "clusterScope": True}],
                            "startingStep": 2,
                            "args": [{"name": "a", "value": "plain"},
                                     {"name": "env", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['env']"}}},
                                     {"name": "v", "valueFrom": {"fieldRef": {"fieldPath": "spec.template.metadata.labels.version"}}},
                                     {"name": "stable", "valueFrom": {"podTemplateHashValue": "Stable"}}]}}}}}  # fmt: skip
    (background,) = rollout_analyses(rollout)
    assert background.step_index is None and background.starting_step == 2
    assert rollout_args(background, rollout, {"Stable": "s1"}) == {
        "a": "plain", "env": "prod", "v": "1.4.0", "stable": "s1"}  # fmt: skip
    with pytest.raises(AnalysisSpecError, match="no Stable pod template hash"):
        rollout_args(background, rollout, {})
    with pytest.raises(AnalysisSpecError, match='ClusterAnalysisTemplate "slo" not found'):
        select_templates(background, [template({"name": "m"})])


def test_broken_conditions_are_reported_for_ci() -> None:
    run = prepare_run(template({"name": "m", "successCondition": "result.x > 1"}))
    (problem,) = check_conditions(run)
    assert "metric 'm' successCondition: unsupported syntax '.'" in problem
