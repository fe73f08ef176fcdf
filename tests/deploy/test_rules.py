"""Each controller rule of spec section 11 (tests/deploy/rules.py) rejects a mutated copy of
the real manifests. The unmutated manifests pass every rule (test_manifests.py)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from tests.deploy import rules
from tests.deploy.conftest import only
from tests.deploy.rules import Doc

Obj = dict[str, Any]


@dataclass
class Bundle:
    """The manifests under test, with handles on the objects the mutations touch."""

    docs: list[Doc]
    supplied: dict[str, str] | None = None

    @property
    def rollout(self) -> Obj:
        return only(self.docs, "Rollout", "payment-router").body

    @property
    def canary(self) -> Obj:
        canary: Obj = self.rollout["spec"]["strategy"]["canary"]
        return canary

    @property
    def steps(self) -> list[Obj]:
        steps: list[Obj] = self.canary["steps"]
        return steps

    @property
    def template(self) -> Obj:
        return only(self.docs, "AnalysisTemplate", "payment-router-slo").body

    @property
    def metric(self) -> Obj:
        metric: Obj = self.template["spec"]["metrics"][0]
        return metric

    def named(self, kind: str, name: str) -> Obj:
        return only(self.docs, kind, name).body


def all_errors(b: Bundle) -> list[str]:
    """Every rule on every object of the bundle."""
    templates = {d.name: d.body for d in b.docs if d.kind == "AnalysisTemplate"}
    services = {d.name: d.body for d in b.docs if d.kind == "Service"}
    virtual_services = {d.name: d.body for d in b.docs if d.kind == "VirtualService"}
    errors: list[str] = []
    for rollout in (d.body for d in b.docs if d.kind == "Rollout"):
        errors += rules.rollout_errors(rollout)
        errors += rules.analysis_ref_errors(rollout, templates, {})
        errors += rules.service_errors(rollout, services)
        errors += rules.virtual_service_errors(rollout, virtual_services, "payments")
    for name, tmpl in templates.items():
        supplied = b.supplied if name == "payment-router-slo" else None
        errors += rules.template_errors(tmpl, supplied)
    errors += rules.workload_selector_errors(b.docs)
    return errors


def _header_route(b: Bundle, value: Obj, router: Obj | None = None, managed: bool = True) -> None:
    if router is not None:
        b.canary["trafficRouting"] = router
    if managed:
        b.canary["trafficRouting"]["managedRoutes"] = [{"name": "beta"}]
    b.steps.insert(
        0,
        {
            "setHeaderRoute": {
                "name": "beta",
                "match": [{"headerName": "x-beta", "headerValue": value}],
            }
        },
    )


def _mirror_route(b: Bundle, router: Obj | None = None, managed: bool = True) -> None:
    if router is not None:
        b.canary["trafficRouting"] = router
    if managed:
        b.canary["trafficRouting"]["managedRoutes"] = [{"name": "mirror"}]
    b.steps.insert(0, {"setMirrorRoute": {"name": "mirror", "percentage": 10}})


def _second_template(b: Bundle, change: Callable[[Obj], None]) -> None:
    other = copy.deepcopy(b.template)
    other["metadata"]["name"] = "extra-gates"
    change(other)
    b.docs.append(Doc(b.docs[0].path, 99, other))
    for step in b.steps:
        if "analysis" in step:
            step["analysis"]["templates"].append({"templateName": "extra-gates"})


NGINX = {"nginx": {"stableIngress": "payment-router"}}
ALB = {"alb": {"ingress": "payment-router", "servicePort": 50051}}


def _other_window(t: Obj) -> None:
    """Another template with its own metrics but another default for `window`."""
    for m in t["spec"]["metrics"]:
        m["name"] = "extra-" + m["name"]
    t["spec"]["dryRun"] = [{"metricName": "^extra-shadow-acquirer-divergence$"}]
    window = next(a for a in t["spec"]["args"] if a["name"] == "window")
    window["value"] = "1m"


def _without_routing(b: Bundle, step: Obj | None = None, **canary: Any) -> None:
    b.canary.pop("trafficRouting")
    b.canary.update(canary)
    if step is not None:
        b.steps.insert(0, step)


# (rule, mutation, expected error fragment)
CASES: list[tuple[str, Callable[[Bundle], Any], str]] = [
    # ---- Rollout
    (
        "strategy: none",
        lambda b: b.rollout["spec"]["strategy"].pop("canary"),
        "exactly one of canary/blueGreen",
    ),
    (
        "strategy: both",
        lambda b: b.rollout["spec"]["strategy"].update(blueGreen={"activeService": "x"}),
        "exactly one of canary/blueGreen",
    ),
    ("selector present", lambda b: b.rollout["spec"].pop("selector"), "spec.selector: required"),
    (
        "selector matches the template",
        lambda b: b.rollout["spec"]["selector"]["matchLabels"].update(app="other"),
        "not on the pod template",
    ),
    (
        "maxSurge/maxUnavailable not both 0",
        lambda b: b.canary.update(maxSurge=0, maxUnavailable="0%"),
        "cannot both be 0",
    ),
    ("step: two actions", lambda b: b.steps[0].update(pause={}), "exactly one action"),
    ("step: no action", lambda b: b.steps.insert(0, {}), "exactly one action"),
    ("setWeight above 100", lambda b: b.steps[0].update(setWeight=101), "not within 0..100"),
    ("setWeight below 0", lambda b: b.steps[0].update(setWeight=-1), "not within 0..100"),
    (
        "setWeight above maxTrafficWeight",
        lambda b: (
            b.canary.update(trafficRouting={**NGINX, "maxTrafficWeight": 10}),
            b.steps[0].update(setWeight=25),
        ),
        "not within 0..10",
    ),
    (
        "maxTrafficWeight only with nginx/plugins",
        lambda b: b.canary["trafficRouting"].update(maxTrafficWeight=1000),
        "maxTrafficWeight: only with nginx",
    ),
    (
        "pause: negative seconds",
        lambda b: b.steps.insert(0, {"pause": {"duration": -5}}),
        "is negative",
    ),
    (
        "pause: negative duration",
        lambda b: b.steps.insert(0, {"pause": {"duration": "-1m"}}),
        "is negative",
    ),
    (
        "pause: not a Go duration",
        lambda b: b.steps.insert(0, {"pause": {"duration": "2d"}}),
        "neither seconds nor a Go duration",
    ),
    (
        "canaryService != stableService",
        lambda b: b.canary.update(canaryService=b.canary["stableService"]),
        "are both",
    ),
    (
        "trafficRouting needs both services",
        lambda b: b.canary.pop("canaryService"),
        "needs both canaryService and stableService",
    ),
    (
        "setCanaryScale needs trafficRouting",
        lambda b: _without_routing(b, step={"setCanaryScale": {"weight": 10}}),
        "setCanaryScale: needs trafficRouting",
    ),
    (
        "setHeaderRoute needs Istio/ALB/APISIX/plugin",
        lambda b: _header_route(b, {"exact": "1"}, router=dict(NGINX)),
        "needs Istio, ALB, APISIX or a plugin",
    ),
    (
        "setHeaderRoute route in managedRoutes",
        lambda b: _header_route(b, {"exact": "1"}, managed=False),
        "not in managedRoutes",
    ),
    (
        "header value: exactly one of exact/regex/prefix",
        lambda b: _header_route(b, {"exact": "1", "prefix": "1"}),
        "exactly one of exact/regex/prefix",
    ),
    (
        "header value: ALB exact only",
        lambda b: _header_route(b, {"prefix": "1"}, router=dict(ALB)),
        "ALB matches headers with exact only",
    ),
    (
        "setMirrorRoute needs Istio/plugin",
        lambda b: _mirror_route(b, router=dict(ALB)),
        "needs Istio or a plugin",
    ),
    (
        "setMirrorRoute route in managedRoutes",
        lambda b: _mirror_route(b, managed=False),
        "not in managedRoutes",
    ),
    (
        "scaleDownDelaySeconds needs trafficRouting",
        lambda b: _without_routing(b, scaleDownDelaySeconds=30),
        "scaleDownDelaySeconds: needs trafficRouting",
    ),
    (
        "dynamicStableScale needs trafficRouting",
        lambda b: _without_routing(b, dynamicStableScale=True),
        "dynamicStableScale: needs trafficRouting",
    ),
    (
        "antiAffinity: exactly one kind",
        lambda b: b.canary.update(
            antiAffinity={
                "requiredDuringSchedulingIgnoredDuringExecution": {},
                "preferredDuringSchedulingIgnoredDuringExecution": {"weight": 50},
            }
        ),
        "exactly one kind",
    ),
    (
        "antiAffinity: weight 1..100",
        lambda b: b.canary.update(
            antiAffinity={"preferredDuringSchedulingIgnoredDuringExecution": {"weight": 0}}
        ),
        "weight must be within 1..100",
    ),
    (
        "analysis fieldRef: downward-API path",
        lambda b: b.steps[1]["analysis"]["args"].append(
            {"name": "job", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels.app"}}}
        ),
        "not a downward-API path",
    ),
    # ---- AnalysisTemplate
    (
        "at least one metric",
        lambda b: b.template["spec"].update(metrics=[], dryRun=[]),
        "at least one metric",
    ),
    (
        "unique metric names",
        lambda b: b.template["spec"]["metrics"][1].update(name=b.metric["name"]),
        "duplicate name",
    ),
    (
        "exactly one provider: none",
        lambda b: b.metric.update(provider={}),
        "provider: exactly one required",
    ),
    (
        "exactly one provider: two",
        lambda b: b.metric["provider"].update(web={"url": "http://x"}),
        "provider: exactly one required",
    ),
    (
        "consecutiveSuccessLimit >= 0",
        lambda b: b.metric.update(consecutiveSuccessLimit=-1),
        "consecutiveSuccessLimit must be >= 0",
    ),
    (
        "failureLimit >= -1",
        lambda b: b.metric.update(failureLimit=-2),
        "failureLimit must be >= -1",
    ),
    (
        "failureLimit -1 needs consecutiveSuccessLimit",
        lambda b: b.metric.update(failureLimit=-1),
        "needs consecutiveSuccessLimit > 0",
    ),
    (
        "inconclusiveLimit >= 0",
        lambda b: b.metric.update(inconclusiveLimit=-1),
        "inconclusiveLimit must be >= 0",
    ),
    (
        "consecutiveErrorLimit >= 0",
        lambda b: b.metric.update(consecutiveErrorLimit=-1),
        "consecutiveErrorLimit must be >= 0",
    ),
    (
        "count >= failureLimit + consecutiveSuccessLimit",
        lambda b: b.metric.update(failureLimit=3, consecutiveSuccessLimit=3),
        "count must be >= failureLimit + consecutiveSuccessLimit",
    ),
    (
        "count >= consecutiveSuccessLimit (failureLimit -1)",
        lambda b: b.metric.update(failureLimit=-1, consecutiveSuccessLimit=6),
        "count must be >= consecutiveSuccessLimit",
    ),
    (
        "count >= inconclusiveLimit",
        lambda b: b.metric.update(inconclusiveLimit=6),
        "count must be >= inconclusiveLimit",
    ),
    (
        "templated count must be an integer",
        lambda b: setattr(b, "supplied", {"canary-value": "x", "count": "five"}),
        "count: 'five' is not an integer",
    ),
    (
        "count > 1 needs interval",
        lambda b: b.metric.pop("interval"),
        "interval must be specified when count > 1",
    ),
    (
        "interval is a Go duration (via args)",
        lambda b: setattr(b, "supplied", {"canary-value": "x", "interval": "1 minute"}),
        "interval: '1 minute' is not a Go duration",
    ),
    (
        "initialDelay is a Go duration",
        lambda b: b.metric.update(initialDelay="2d"),
        "initialDelay: '2d' is not a Go duration",
    ),
    (
        "dryRun regex matches a metric",
        lambda b: b.template["spec"].update(dryRun=[{"metricName": "^latency$"}]),
        "matches no metric",
    ),
    (
        "dryRun rules unique",
        lambda b: b.template["spec"]["dryRun"].append(dict(b.template["spec"]["dryRun"][0])),
        "duplicate metricName",
    ),
    (
        "dryRun is a regular expression",
        lambda b: b.template["spec"].update(dryRun=[{"metricName": "(shadow"}]),
        "is not a regular expression",
    ),
    (
        "measurementRetention regex matches a metric",
        lambda b: b.template["spec"].update(
            measurementRetention=[{"metricName": "latency-p95", "limit": 20}]
        ),
        "measurementRetention: metricName 'latency-p95' matches no metric",
    ),
    (
        "every tag resolves: undeclared arg",
        lambda b: b.metric["provider"]["prometheus"].update(query='up{job="{{args.service}}"}'),
        "args.service was not resolved (not declared)",
    ),
    (
        "every tag resolves: not an args tag",
        lambda b: b.metric["provider"]["prometheus"].update(query='up{job="{{workflow.name}}"}'),
        "only {{args.NAME}} tags",
    ),
    (
        "every tag resolves: arg without a value",
        lambda b: setattr(b, "supplied", {}),
        "args.canary-value was not resolved (has no value)",
    ),
    # ---- across objects
    (
        "referenced template exists",
        lambda b: b.steps[1]["analysis"]["templates"][0].update(templateName="slo"),
        "AnalysisTemplate 'slo' not found",
    ),
    (
        "referenced cluster template exists",
        lambda b: b.steps[1]["analysis"]["templates"][0].update(clusterScope=True),
        "ClusterAnalysisTemplate 'payment-router-slo' not found",
    ),
    (
        "rollout args are declared",
        lambda b: b.steps[1]["analysis"]["args"].append({"name": "canary-hash", "value": "x"}),
        "'canary-hash' is not declared by the templates (ignored)",
    ),
    (
        "rollout supplies value-less args",
        lambda b: b.steps[1]["analysis"].pop("args"),
        "args.canary-value was not resolved",
    ),
    (
        "one value per arg across templates",
        lambda b: _second_template(b, _other_window),
        "arg 'window' has two values across templates",
    ),
    (
        "unique metric names across templates",
        lambda b: _second_template(b, lambda t: None),
        "metric 'error-rate' defined by two templates",
    ),
    (
        "stable Service exists",
        lambda b: b.canary.update(stableService="payment-router-primary"),
        "Service 'payment-router-primary' not found",
    ),
    (
        "Service selects the Rollout's pods",
        lambda b: b.named("Service", "payment-router-canary")["spec"]["selector"].update(
            app="router"
        ),
        "does not select the Rollout's pods",
    ),
    (
        "Service targets a container port",
        lambda b: b.named("Service", "payment-router-stable")["spec"]["ports"][0].update(
            targetPort="http"
        ),
        "targetPort 'http' is not a container port",
    ),
    (
        "VirtualService exists",
        lambda b: b.canary["trafficRouting"]["istio"]["virtualService"].update(name="router"),
        "VirtualService 'router' not found",
    ),
    (
        "VirtualService route exists",
        lambda b: b.canary["trafficRouting"]["istio"]["virtualService"].update(routes=["main"]),
        "http route 'main' not found",
    ),
    (
        "VirtualService splits stable/canary",
        lambda b: b.named("VirtualService", "payment-router")["spec"]["http"][0]["route"][1][
            "destination"
        ].update(host="payment-router"),
        "must be exactly the stable and canary Services",
    ),
    (
        "Deployment selects its pods",
        lambda b: b.named("Deployment", "flagd")["spec"]["selector"]["matchLabels"].update(
            app="flag-daemon"
        ),
        "not on the pod template",
    ),
    (
        "PodDisruptionBudget selects a workload",
        lambda b: b.named("PodDisruptionBudget", "flagd")["spec"]["selector"]["matchLabels"].update(
            app="flag-daemon"
        ),
        "selects no Deployment or Rollout pods",
    ),
]


@pytest.mark.parametrize(("rule", "mutate", "expected"), CASES, ids=[c[0] for c in CASES])
def test_rule_rejects_a_mutated_manifest(
    docs: list[Doc], rule: str, mutate: Callable[[Bundle], Any], expected: str
) -> None:
    bundle = Bundle(docs)
    assert all_errors(bundle) == []  # the real files are clean
    mutate(bundle)
    errors = all_errors(bundle)
    assert any(expected in e for e in errors), f"{rule}: {errors}"


@pytest.mark.parametrize(
    ("mutate"),
    [
        # nginx may raise the weight ceiling
        lambda b: (
            b.canary.update(trafficRouting={**NGINX, "maxTrafficWeight": 1000}),
            b.steps[0].update(setWeight=500),
        ),
        # pause durations: seconds, digit strings, Go durations
        lambda b: b.steps.insert(0, {"pause": {"duration": "30"}}),
        lambda b: b.steps.insert(0, {"pause": {"duration": "1h30m"}}),
        # dryRun is unanchored: "latency" matches "p99-latency"
        lambda b: b.template["spec"].update(dryRun=[{"metricName": "latency"}]),
        # downward-API paths with a key
        lambda b: b.steps[1]["analysis"]["args"].append(
            {"name": "job", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}}
        ),
        # header route done right, on Istio
        lambda b: _header_route(b, {"regex": "1|2"}),
        lambda b: _mirror_route(b),
    ],
)
def test_rules_accept_what_the_controller_accepts(
    docs: list[Doc], mutate: Callable[[Bundle], Any]
) -> None:
    bundle = Bundle(docs)
    mutate(bundle)
    assert all_errors(bundle) == []


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("0", True),
        ("1m", True),
        ("1h30m", True),
        ("1.5s", True),
        ("300ms", True),
        ("-2m", True),
        ("", False),
        ("1", False),
        ("2d", False),
        ("1 m", False),
        ("m", False),
        ("1m ", False),
    ],
)
def test_go_duration(text: str, ok: bool) -> None:
    assert rules.go_duration_ok(text) is ok


def test_go_duration_seconds() -> None:
    assert rules.go_duration_seconds("1h30m") == 5400
    assert rules.go_duration_seconds("-1.5s") == -1.5
    assert rules.go_duration_seconds("250ms") == 0.25
