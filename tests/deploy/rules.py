"""What the strict JSON Schemas cannot say: the Argo Rollouts controller's own validation.

Each rule of `../shared/spec/analysis-semantics.md` section 11 is a function here that returns
readable error strings (empty list = valid). The Rollout rules follow
`pkg/apis/rollouts/validation/validation.go`, the AnalysisTemplate rules `ValidateMetric` in
`utils/analysis/factory.go` (which `kubectl argo rollouts lint` does not run), and the
cross-object rules what `lint` checks across one file set (Services, Istio VirtualServices) plus
the template references a Rollout makes. tests/deploy/test_rules.py gives each rule a negative
test on a mutated copy of the real manifests.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

Obj = dict[str, Any]

STEP_ACTIONS = (
    "setWeight",
    "pause",
    "experiment",
    "analysis",
    "setCanaryScale",
    "setHeaderRoute",
    "setMirrorRoute",
    "plugin",
)
HEADER_ROUTERS = ("istio", "alb", "apisix", "plugins")
MIRROR_ROUTERS = ("istio", "plugins")
PROVIDERS_WITH_MAX_WEIGHT = ("nginx", "plugins")
TAG_RE = re.compile(r"\{\{(.*?)\}\}")
ARG_TAG_RE = re.compile(r"^\s*args\.([A-Za-z0-9_.-]+)\s*$")
# Go's time.ParseDuration: an optional sign, then one or more decimal numbers with a unit; "0".
GO_DURATION_RE = re.compile(r"^[-+]?(?:0|(?:(?:\d+\.?\d*|\.\d+)(?:ns|us|µs|μs|ms|s|m|h))+)$")
DOWNWARD_API_RE = re.compile(
    r"^metadata\.(?:name|namespace|uid|labels|annotations"
    r"|labels\['[A-Za-z0-9./_-]+'\]|annotations\['[A-Za-z0-9./_-]+'\])$"
)


# -- documents ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Doc:
    """One YAML document of a manifest file."""

    path: Path
    index: int
    body: Obj

    @property
    def kind(self) -> str:
        return str(self.body.get("kind", ""))

    @property
    def type_key(self) -> str:
        """`apiVersion/kind`, the key of ../shared/schemas/index.json."""
        return f"{self.body.get('apiVersion', '')}/{self.kind}"

    @property
    def name(self) -> str:
        return str((self.body.get("metadata") or {}).get("name", ""))

    def __str__(self) -> str:
        return f"{self.path.name}#{self.index} {self.kind}/{self.name}"


def load_docs(paths: Iterable[Path]) -> list[Doc]:
    """Every non-empty document of the given YAML files, in order."""
    docs = []
    for path in sorted(paths):
        with path.open(encoding="utf-8") as f:
            for i, body in enumerate(yaml.safe_load_all(f)):
                if body is not None:
                    # Plain JSON data: YAML anchors become independent copies, so a test that
                    # mutates one step's analysis does not mutate its aliases too.
                    docs.append(Doc(path, i, json.loads(json.dumps(body))))
    return docs


def by_kind(docs: Sequence[Doc], kind: str) -> list[Doc]:
    return [d for d in docs if d.kind == kind]


# -- small parsers ------------------------------------------------------------------------------


def go_duration_ok(text: str) -> bool:
    """Whether Go's time.ParseDuration accepts ``text``."""
    return bool(GO_DURATION_RE.match(text))


def go_duration_seconds(text: str) -> float:
    """The value of a Go duration string in seconds (``text`` must be valid)."""
    if not go_duration_ok(text):
        raise ValueError(f"not a Go duration: {text!r}")
    sign = -1.0 if text.startswith("-") else 1.0
    units = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
    total = sum(
        float(num) * units[unit]
        for num, unit in re.findall(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)", text)
    )
    return sign * total


def int_or_string(value: Any, what: str, errors: list[str]) -> int | None:
    """An int-or-string field as an int (None when unset); unparsable -> an error."""
    if value is None:
        return None
    if isinstance(value, bool):
        errors.append(f"{what}: {value!r} is not an integer")
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"[-+]?\d+", value.strip()):
        return int(value)
    errors.append(f"{what}: {value!r} is not an integer")
    return None


def _is_zero(value: Any) -> bool:
    return value in (0, "0", "0%")


# -- Rollout ------------------------------------------------------------------------------------


def rollout_errors(rollout: Obj) -> list[str]:
    """The controller's Rollout validation (section 11, Rollout part)."""
    errors: list[str] = []
    spec = rollout.get("spec") or {}
    strategy = spec.get("strategy") or {}
    kinds = [k for k in ("canary", "blueGreen") if strategy.get(k) is not None]
    if len(kinds) != 1:
        errors.append(
            f"strategy: exactly one of canary/blueGreen required, found {kinds or 'none'}"
        )
    selector = spec.get("selector")
    if not selector:
        errors.append("spec.selector: required")
    else:
        errors += _selector_matches_template(selector, spec.get("template") or {})
    canary = strategy.get("canary")
    if canary is not None:
        errors += _canary_errors(canary, spec)
    return errors


def _selector_matches_template(selector: Obj, template: Obj) -> list[str]:
    labels = (template.get("metadata") or {}).get("labels") or {}
    wanted = selector.get("matchLabels") or {}
    missing = {k: v for k, v in wanted.items() if labels.get(k) != v}
    if missing:
        return [f"spec.selector: matchLabels {missing} not on the pod template's labels"]
    return []


def _traffic_providers(routing: Obj | None) -> set[str]:
    return {
        k
        for k, v in (routing or {}).items()
        if v is not None and k not in ("maxTrafficWeight", "managedRoutes")
    }


def _canary_errors(canary: Obj, spec: Obj) -> list[str]:
    errors: list[str] = []
    routing = canary.get("trafficRouting")
    providers = _traffic_providers(routing)
    surge, unavailable = canary.get("maxSurge", "25%"), canary.get("maxUnavailable", "25%")
    if _is_zero(surge) and _is_zero(unavailable):
        errors.append("canary: maxSurge and maxUnavailable cannot both be 0")
    canary_svc, stable_svc = canary.get("canaryService", ""), canary.get("stableService", "")
    if canary_svc and canary_svc == stable_svc:
        errors.append(f"canary: canaryService and stableService are both {canary_svc!r}")
    if routing is not None and not (canary_svc and stable_svc):
        errors.append("canary: trafficRouting needs both canaryService and stableService")
    if routing is None:
        for field in ("scaleDownDelaySeconds", "dynamicStableScale"):
            if canary.get(field) is not None:
                errors.append(f"canary.{field}: needs trafficRouting")
    max_weight = 100
    if routing is not None and routing.get("maxTrafficWeight") is not None:
        if not providers & set(PROVIDERS_WITH_MAX_WEIGHT):
            errors.append("trafficRouting.maxTrafficWeight: only with nginx or plugins")
        else:
            max_weight = int(routing["maxTrafficWeight"])
    managed = {r.get("name") for r in (routing or {}).get("managedRoutes") or []}
    errors += _anti_affinity_errors(canary.get("antiAffinity"))
    for i, step in enumerate(canary.get("steps") or []):
        errors += _step_errors(i, step or {}, routing, providers, managed, max_weight)
    if canary.get("analysis") is not None:
        errors += _analysis_args_errors("canary.analysis", canary["analysis"])
    return errors


def _anti_affinity_errors(anti: Obj | None) -> list[str]:
    if anti is None:
        return []
    kinds = [
        k
        for k in (
            "requiredDuringSchedulingIgnoredDuringExecution",
            "preferredDuringSchedulingIgnoredDuringExecution",
        )
        if anti.get(k) is not None
    ]
    if len(kinds) != 1:
        return [f"canary.antiAffinity: exactly one kind required, found {kinds or 'none'}"]
    preferred = anti.get("preferredDuringSchedulingIgnoredDuringExecution")
    if preferred is not None and not 1 <= int(preferred.get("weight", 0)) <= 100:
        return ["canary.antiAffinity: preferred weight must be within 1..100"]
    return []


def _step_errors(
    i: int, step: Obj, routing: Obj | None, providers: set[str], managed: set[Any], max_weight: int
) -> list[str]:
    where = f"steps[{i}]"
    errors: list[str] = []
    actions = [a for a in STEP_ACTIONS if step.get(a) is not None]
    if len(actions) != 1:
        errors.append(f"{where}: exactly one action required, found {actions or 'none'}")
    if "setWeight" in step and step["setWeight"] is not None:
        weight = step["setWeight"]
        if not isinstance(weight, int) or not 0 <= weight <= max_weight:
            errors.append(f"{where}.setWeight: {weight!r} is not within 0..{max_weight}")
    if step.get("pause") is not None:
        errors += _pause_errors(where, step["pause"])
    if step.get("setCanaryScale") is not None and routing is None:
        errors.append(f"{where}.setCanaryScale: needs trafficRouting")
    header = step.get("setHeaderRoute")
    if header is not None:
        if not providers & set(HEADER_ROUTERS):
            errors.append(f"{where}.setHeaderRoute: needs Istio, ALB, APISIX or a plugin")
        if header.get("name") not in managed:
            errors.append(
                f"{where}.setHeaderRoute: route {header.get('name')!r} not in managedRoutes"
            )
        for match in header.get("match") or []:
            value = match.get("headerValue") or {}
            kinds = [k for k in ("exact", "regex", "prefix") if value.get(k) is not None]
            if len(kinds) != 1:
                errors.append(
                    f"{where}.setHeaderRoute: a header value needs exactly one of exact/regex/prefix"
                )
            elif "alb" in providers and kinds != ["exact"]:
                errors.append(f"{where}.setHeaderRoute: ALB matches headers with exact only")
    mirror = step.get("setMirrorRoute")
    if mirror is not None:
        if not providers & set(MIRROR_ROUTERS):
            errors.append(f"{where}.setMirrorRoute: needs Istio or a plugin")
        if mirror.get("name") not in managed:
            errors.append(
                f"{where}.setMirrorRoute: route {mirror.get('name')!r} not in managedRoutes"
            )
    if step.get("analysis") is not None:
        errors += _analysis_args_errors(f"{where}.analysis", step["analysis"])
    return errors


def _pause_errors(where: str, pause: Obj) -> list[str]:
    duration = pause.get("duration")
    if duration is None:
        return []
    if isinstance(duration, int) and not isinstance(duration, bool):
        seconds: float = duration
    elif isinstance(duration, str) and duration.isdigit():
        seconds = int(duration)
    elif isinstance(duration, str) and go_duration_ok(duration):
        seconds = go_duration_seconds(duration)
    else:
        return [f"{where}.pause.duration: {duration!r} is neither seconds nor a Go duration"]
    if seconds < 0:
        return [f"{where}.pause.duration: {duration!r} is negative"]
    return []


def _analysis_args_errors(where: str, analysis: Obj) -> list[str]:
    errors = []
    for arg in analysis.get("args") or []:
        path = ((arg.get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath")
        if (
            isinstance(path, str)
            and path.startswith("metadata")
            and not DOWNWARD_API_RE.match(path)
        ):
            errors.append(f"{where}.args[{arg.get('name')}]: {path!r} is not a downward-API path")
    return errors


# -- AnalysisTemplate ---------------------------------------------------------------------------


def template_args(
    template: Obj, supplied: Mapping[str, str] | None = None
) -> dict[str, str | None]:
    """Declared args with their values (defaults, then ``supplied``); None = no value."""
    values: dict[str, str | None] = {}
    for arg in (template.get("spec") or {}).get("args") or []:
        name = arg.get("name")
        if arg.get("value") is not None:
            values[name] = str(arg["value"])
        elif arg.get("valueFrom") is not None:
            values[name] = "*****"  # a secret or field: resolved by the controller at run time
        else:
            values[name] = None
    for name, value in (supplied or {}).items():
        if name in values:  # undeclared Rollout args are ignored by the controller
            values[name] = value
    return values


def dummy_args(template: Obj) -> dict[str, str]:
    """Every declared arg with its default, or a dummy value where it has none (CI check)."""
    return {
        name: value if value is not None else f"dummy-{name}"
        for name, value in template_args(template).items()
    }


def substitute(metric: Obj, values: Mapping[str, str | None]) -> tuple[Obj, list[str]]:
    """The metric with every `{{args.x}}` replaced (as the controller does, through JSON)."""
    errors: list[str] = []
    text = json.dumps(metric)

    def replace(match: re.Match[str]) -> str:
        tag = ARG_TAG_RE.match(match.group(1))
        if tag is None:
            errors.append(f"{{{{{match.group(1)}}}}}: only {{{{args.NAME}}}} tags can be resolved")
            return match.group(0)
        name = tag.group(1)
        value = values.get(name)
        if value is None:
            reason = "not declared" if name not in values else "has no value"
            errors.append(f"args.{name} was not resolved ({reason})")
            return match.group(0)
        return json.dumps(value)[1:-1]  # JSON-escaped, inserted literally

    resolved = TAG_RE.sub(replace, text)
    return json.loads(resolved), errors


def template_errors(template: Obj, supplied: Mapping[str, str] | None = None) -> list[str]:
    """ValidateMetric for every metric (after arg substitution) and the dryRun/retention rules.

    Without ``supplied`` every arg lacking a value gets a dummy, so the check runs in CI;
    with it, unresolved args are errors, as at run time.
    """
    spec = template.get("spec") or {}
    metrics = spec.get("metrics") or []
    errors: list[str] = []
    if not metrics:
        return ["spec.metrics: at least one metric required"]
    values = (
        template_args(template, supplied) if supplied is not None else dict(dummy_args(template))
    )
    names = [m.get("name") for m in metrics]
    for name in sorted({n for n in names if names.count(n) > 1}, key=str):
        errors.append(f"metrics: duplicate name {name!r}")
    for metric in metrics:
        resolved, subst_errors = substitute(metric, values)
        where = f"metrics[{metric.get('name')}]"
        errors += [f"{where}: {e}" for e in subst_errors]
        if not subst_errors:
            errors += [f"{where}: {e}" for e in metric_errors(resolved)]
    for field in ("dryRun", "measurementRetention"):
        errors += _metric_name_rules(field, spec.get(field) or [], [str(n) for n in names])
    return errors


def metric_errors(metric: Obj) -> list[str]:
    """`ValidateMetric` on one metric whose args are already substituted."""
    errors: list[str] = []
    provider = metric.get("provider") or {}
    set_providers = [k for k, v in provider.items() if v is not None]
    if len(set_providers) != 1:
        errors.append(f"provider: exactly one required, found {set_providers or 'none'}")
    count = int_or_string(metric.get("count"), "count", errors) or 0
    failure = int_or_string(metric.get("failureLimit"), "failureLimit", errors)
    inconclusive = int_or_string(metric.get("inconclusiveLimit"), "inconclusiveLimit", errors)
    error_limit = int_or_string(
        metric.get("consecutiveErrorLimit"), "consecutiveErrorLimit", errors
    )
    success = int_or_string(
        metric.get("consecutiveSuccessLimit"), "consecutiveSuccessLimit", errors
    )
    failure = 0 if failure is None else failure
    inconclusive = 0 if inconclusive is None else inconclusive
    error_limit = 4 if error_limit is None else error_limit
    success = 0 if success is None else success
    if success < 0:
        errors.append("consecutiveSuccessLimit must be >= 0")
    if failure < -1:
        errors.append("failureLimit must be >= -1")
    if failure == -1 and success == 0:
        errors.append("failureLimit -1 needs consecutiveSuccessLimit > 0")
    if inconclusive < 0:
        errors.append("inconclusiveLimit must be >= 0")
    if error_limit < 0:
        errors.append("consecutiveErrorLimit must be >= 0")
    if count > 0:
        if failure >= 0 and success >= 0 and count < failure + success:
            errors.append("count must be >= failureLimit + consecutiveSuccessLimit")
        if failure == -1 and count < success:
            errors.append("count must be >= consecutiveSuccessLimit")
        if count < inconclusive:
            errors.append("count must be >= inconclusiveLimit")
    if count > 1 and not metric.get("interval"):
        errors.append("interval must be specified when count > 1")
    for field in ("interval", "initialDelay"):
        value = metric.get(field)
        if value and not (isinstance(value, str) and go_duration_ok(value)):
            errors.append(f"{field}: {value!r} is not a Go duration")
    return errors


def _metric_name_rules(field: str, rules: Sequence[Obj], names: Sequence[str]) -> list[str]:
    errors = []
    texts = [str(r.get("metricName", "")) for r in rules]
    for text in sorted({t for t in texts if texts.count(t) > 1}):
        errors.append(f"{field}: duplicate metricName {text!r}")
    for text in texts:
        try:
            pattern = re.compile(text)
        except re.error as exc:
            errors.append(f"{field}: metricName {text!r} is not a regular expression: {exc}")
            continue
        if not any(pattern.search(n) for n in names):  # unanchored, like Go's MatchString
            errors.append(f"{field}: metricName {text!r} matches no metric")
    return errors


# -- across objects (what `kubectl argo rollouts lint` checks in one file set, and more) ---------


def template_refs(rollout: Obj) -> list[tuple[str, Obj]]:
    """(where, analysis) for every step and background analysis of a canary Rollout."""
    canary = ((rollout.get("spec") or {}).get("strategy") or {}).get("canary") or {}
    refs = [
        (f"steps[{i}].analysis", step["analysis"])
        for i, step in enumerate(canary.get("steps") or [])
        if (step or {}).get("analysis") is not None
    ]
    if canary.get("analysis") is not None:
        refs.append(("canary.analysis", canary["analysis"]))
    return refs


def analysis_ref_errors(
    rollout: Obj, templates: Mapping[str, Obj], cluster_templates: Mapping[str, Obj]
) -> list[str]:
    """Every referenced template exists; the merged args resolve every tag; no arg is ignored."""
    errors: list[str] = []
    for where, analysis in template_refs(rollout):
        merged: dict[str, str | None] = {}
        metric_names: list[str] = []
        found: list[Obj] = []
        for ref in analysis.get("templates") or []:
            pool = cluster_templates if ref.get("clusterScope") else templates
            template = pool.get(ref.get("templateName", ""))
            if template is None:
                kind = "ClusterAnalysisTemplate" if ref.get("clusterScope") else "AnalysisTemplate"
                errors.append(f"{where}: {kind} {ref.get('templateName')!r} not found")
                continue
            found.append(template)
            for name, value in template_args(template).items():
                old = merged.get(name)
                if old is not None and value is not None and old != value:
                    errors.append(f"{where}: arg {name!r} has two values across templates")
                merged[name] = value if value is not None else old
            metric_names += [
                m.get("name") for m in (template.get("spec") or {}).get("metrics") or []
            ]
        for name in sorted({n for n in metric_names if metric_names.count(n) > 1}, key=str):
            errors.append(f"{where}: metric {name!r} defined by two templates")
        supplied = {}
        for arg in analysis.get("args") or []:
            name = arg.get("name")
            if name not in merged:
                errors.append(f"{where}: arg {name!r} is not declared by the templates (ignored)")
                continue
            supplied[name] = "rollout-supplied"
        values = {**merged, **supplied}
        for template in found:
            for metric in (template.get("spec") or {}).get("metrics") or []:
                _, subst = substitute(metric, values)
                errors += [f"{where} -> {metric.get('name')}: {e}" for e in subst]
    return errors


def service_errors(rollout: Obj, services: Mapping[str, Obj]) -> list[str]:
    """canary/stable Services exist, select the Rollout's pods and target its named ports."""
    errors: list[str] = []
    spec = rollout.get("spec") or {}
    canary = (spec.get("strategy") or {}).get("canary") or {}
    template = spec.get("template") or {}
    labels = (template.get("metadata") or {}).get("labels") or {}
    port_names = {
        p.get("name")
        for c in (template.get("spec") or {}).get("containers") or []
        for p in c.get("ports") or []
    }
    port_numbers = {
        p.get("containerPort")
        for c in (template.get("spec") or {}).get("containers") or []
        for p in c.get("ports") or []
    }
    for field in ("canaryService", "stableService"):
        name = canary.get(field)
        if not name:
            continue
        service = services.get(name)
        if service is None:
            errors.append(f"canary.{field}: Service {name!r} not found")
            continue
        selector = (service.get("spec") or {}).get("selector") or {}
        if not selector or any(labels.get(k) != v for k, v in selector.items()):
            errors.append(
                f"Service {name!r}: selector {selector} does not select the Rollout's pods"
            )
        for port in (service.get("spec") or {}).get("ports") or []:
            target = port.get("targetPort", port.get("port"))
            if target not in port_names and target not in port_numbers:
                errors.append(f"Service {name!r}: targetPort {target!r} is not a container port")
    return errors


def virtual_service_errors(
    rollout: Obj, virtual_services: Mapping[str, Obj], namespace: str
) -> list[str]:
    """The Istio VirtualService and routes the Rollout names exist and split stable/canary."""
    canary = ((rollout.get("spec") or {}).get("strategy") or {}).get("canary") or {}
    istio = (canary.get("trafficRouting") or {}).get("istio")
    if istio is None:
        return []
    errors: list[str] = []
    refs = [istio["virtualService"]] if istio.get("virtualService") else []
    refs += istio.get("virtualServices") or []
    if not refs:
        errors.append("trafficRouting.istio: no virtualService named")

    def short(host: str) -> str:
        """A Service host in the Rollout's namespace as the Service's bare name."""
        for suffix in (f".{namespace}.svc.cluster.local", f".{namespace}.svc", f".{namespace}"):
            if host.endswith(suffix):
                return host[: -len(suffix)]
        return host

    wanted = {canary.get("stableService"), canary.get("canaryService")}
    for ref in refs:
        vs = virtual_services.get(ref.get("name", ""))
        if vs is None:
            errors.append(f"trafficRouting.istio: VirtualService {ref.get('name')!r} not found")
            continue
        http = {r.get("name"): r for r in (vs.get("spec") or {}).get("http") or []}
        route_names = ref.get("routes") or (list(http) if len(http) == 1 else [])
        if not route_names:
            errors.append(
                f"VirtualService {ref.get('name')!r}: name the routes (several http routes)"
            )
        for route_name in route_names:
            route = http.get(route_name)
            if route is None:
                errors.append(
                    f"VirtualService {ref.get('name')!r}: http route {route_name!r} not found"
                )
                continue
            hosts = [
                short(str((d.get("destination") or {}).get("host", "")))
                for d in route.get("route") or []
            ]
            if sorted(hosts) != sorted(str(w) for w in wanted) or len(hosts) != 2:
                errors.append(
                    f"VirtualService {ref.get('name')!r} route {route_name!r}: destinations {hosts} "
                    f"must be exactly the stable and canary Services {sorted(str(w) for w in wanted)}"
                )
    return errors


def workload_selector_errors(docs: Sequence[Doc]) -> list[str]:
    """Deployments select their own pods; every PodDisruptionBudget selects some workload."""
    errors: list[str] = []
    pod_labels: list[dict[str, Any]] = []
    for doc in docs:
        if doc.kind in ("Deployment", "Rollout"):
            spec = doc.body.get("spec") or {}
            labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
            pod_labels.append(labels)
            if doc.kind == "Deployment":
                errors += [
                    f"{doc}: {e}"
                    for e in _selector_matches_template(
                        spec.get("selector") or {}, spec.get("template") or {}
                    )
                ]
    for doc in by_kind(docs, "PodDisruptionBudget"):
        wanted = ((doc.body.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
        if (
            not any(all(labels.get(k) == v for k, v in wanted.items()) for labels in pod_labels)
            or not wanted
        ):
            errors.append(f"{doc}: selector {wanted} selects no Deployment or Rollout pods")
    return errors
