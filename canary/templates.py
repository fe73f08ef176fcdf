"""AnalysisTemplate / Rollout YAML: args merging, `{{args.x}}` substitution, metric validation.

Spec section 8 (args) and section 11 (the controller's metric rules, which the JSON Schemas do
not cover). Everything here is pure: it turns YAML documents plus argument values into a
RunSpec (resolved, validated metrics) or raises AnalysisSpecError, which a run reports as Error
before taking any measurement (spec 4).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from canary.condition import ConditionError, parse
from canary.prometheus import PrometheusSpec

__all__ = [
    "DEFAULT_CONSECUTIVE_ERROR_LIMIT",
    "DEFAULT_MEASUREMENT_LIMIT",
    "AnalysisSpecError",
    "AnalysisTemplate",
    "Argument",
    "MetricSpec",
    "RolloutAnalysis",
    "RunSpec",
    "check_conditions",
    "load_documents",
    "load_templates",
    "parse_duration",
    "prepare_run",
    "rollout_analyses",
    "rollout_args",
    "select_templates",
    "substitute",
    "templates_from_documents",
]

DEFAULT_CONSECUTIVE_ERROR_LIMIT = 4  # utils/defaults (5.1)
DEFAULT_MEASUREMENT_LIMIT = 10  # measurements kept per metric unless measurementRetention (5.4)
TEMPLATE_KINDS = ("AnalysisTemplate", "ClusterAnalysisTemplate")
REDACTED = "*****"


class AnalysisSpecError(Exception):
    """Args cannot be resolved or the metrics are invalid: the run is Error, nothing measured."""


# ----------------------------------------------------------------------------- durations

_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0,
                   "m": 60.0, "h": 3600.0}  # fmt: skip
_DURATION_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_duration(text: str) -> float:
    """Seconds in a Go duration string (`30s`, `1m`, `1h30m`, `500ms`); ValueError if bad."""
    body = text[1:] if text[:1] in "+-" else text
    if body == "0":
        return 0.0
    if not body:
        raise ValueError(f'time: invalid duration "{text}"')
    pos, total = 0, 0.0
    while pos < len(body):
        m = _DURATION_PART.match(body, pos)
        if not m:
            missing = re.fullmatch(r"[\d.]+", body[pos:])
            reason = "missing unit in duration" if missing else "invalid duration"
            raise ValueError(f'time: {reason} "{text}"')
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    return -total if text.startswith("-") else total


# ----------------------------------------------------------------------------- documents


def load_documents(source: str | Path) -> list[dict[str, Any]]:
    """The YAML documents of a file (a Path) or of YAML text (a str); empty documents dropped."""
    text = source.read_text() if isinstance(source, Path) else source
    docs = [d for d in yaml.safe_load_all(text) if d is not None]
    for d in docs:
        if not isinstance(d, dict):
            raise AnalysisSpecError(f"expected a mapping per YAML document, got {type(d).__name__}")
    return docs


@dataclass(frozen=True)
class Argument:
    """A template arg: a default `value`, or `valueFrom.secretKeyRef` (8)."""

    name: str
    value: str | None = None
    secret: tuple[str, str] | None = None  # (secret name, key)


@dataclass(frozen=True)
class AnalysisTemplate:
    """An AnalysisTemplate or ClusterAnalysisTemplate as written (metrics not yet resolved)."""

    name: str
    metrics: tuple[Mapping[str, Any], ...]
    args: tuple[Argument, ...] = ()
    dry_run: tuple[str, ...] = ()
    measurement_retention: tuple[tuple[str, int], ...] = ()
    kind: str = "AnalysisTemplate"

    @classmethod
    def from_document(cls, doc: Mapping[str, Any]) -> AnalysisTemplate:
        """Read one AnalysisTemplate/ClusterAnalysisTemplate document."""
        kind = doc.get("kind")
        if kind not in TEMPLATE_KINDS:
            raise AnalysisSpecError(f"not an analysis template: kind {kind!r}")
        name = str((doc.get("metadata") or {}).get("name", ""))
        spec = doc.get("spec") or {}
        args = []
        for raw in spec.get("args") or ():
            secret = ((raw.get("valueFrom") or {}).get("secretKeyRef")) or None
            args.append(
                Argument(
                    name=str(raw["name"]),
                    value=None if raw.get("value") is None else str(raw["value"]),
                    secret=(str(secret["name"]), str(secret["key"])) if secret else None,
                )
            )
        return cls(
            name=name,
            metrics=tuple(spec.get("metrics") or ()),
            args=tuple(args),
            dry_run=_rules(spec.get("dryRun")),
            measurement_retention=_retention(spec.get("measurementRetention")),
            kind=str(kind),
        )


def _rules(raw: Any) -> tuple[str, ...]:
    return tuple(str(r["metricName"]) for r in raw or ())


def _retention(raw: Any) -> tuple[tuple[str, int], ...]:
    return tuple((str(r["metricName"]), int(r.get("limit", 0))) for r in raw or ())


def templates_from_documents(docs: Iterable[Mapping[str, Any]]) -> list[AnalysisTemplate]:
    """Every (Cluster)AnalysisTemplate among ``docs``; other kinds are skipped."""
    return [AnalysisTemplate.from_document(d) for d in docs if d.get("kind") in TEMPLATE_KINDS]


def load_templates(path: str | Path) -> list[AnalysisTemplate]:
    """Every (Cluster)AnalysisTemplate in a YAML file."""
    return templates_from_documents(load_documents(Path(path)))


# ----------------------------------------------------------------------------- resolved spec


@dataclass(frozen=True)
class MetricSpec:
    """One metric after substitution and validation; durations in seconds."""

    name: str
    prometheus: PrometheusSpec
    interval: float | None = None
    initial_delay: float | None = None
    count: int = 0  # 0 = unset (see effective_count)
    failure_limit: int = 0  # -1 disables the check (only with consecutive_success_limit > 0)
    inconclusive_limit: int = 0
    consecutive_error_limit: int = DEFAULT_CONSECUTIVE_ERROR_LIMIT
    consecutive_success_limit: int = 0  # 0 = disabled
    success_condition: str = ""
    failure_condition: str = ""
    dry_run: bool = False
    measurement_limit: int = DEFAULT_MEASUREMENT_LIMIT

    @property
    def effective_count(self) -> int | None:
        """Measurements wanted; None = unlimited (5.1: unset/0 -> 1 without interval)."""
        if self.count:
            return self.count
        return None if self.interval is not None else 1


@dataclass(frozen=True)
class RunSpec:
    """What an AnalysisRun executes: resolved metrics plus the values to redact."""

    metrics: tuple[MetricSpec, ...]
    args: Mapping[str, str] = field(default_factory=dict)
    secrets: frozenset[str] = frozenset()

    def redact(self, text: str) -> str:
        """Replace secret arg values with `*****` (8)."""
        for secret in self.secrets:
            if secret:
                text = text.replace(secret, REDACTED)
        return text


# ----------------------------------------------------------------------------- args (8)


def _flatten_args(templates: Sequence[AnalysisTemplate]) -> list[Argument]:
    combined: list[Argument] = []
    for template in templates:
        for arg in template.args:
            i = next((i for i, a in enumerate(combined) if a.name == arg.name), None)
            if i is None:
                combined.append(arg)
                continue
            prev = combined[i]
            if prev.value is not None and arg.value is not None and prev.value != arg.value:
                raise AnalysisSpecError(
                    f"Argument `{arg.name}` specified multiple times with different values: "
                    f"'{prev.value}', '{arg.value}'"
                )
            if prev.value is None and prev.secret is None:
                combined[i] = arg
    return combined


def resolve_args(
    templates: Sequence[AnalysisTemplate],
    supplied: Mapping[str, str],
    secrets: Mapping[str, Mapping[str, str]] | None = None,
) -> tuple[dict[str, str], frozenset[str]]:
    """Merge template args with supplied values (they win; undeclared ones are ignored)."""
    values: dict[str, str] = {}
    hidden: set[str] = set()
    for arg in _flatten_args(templates):
        if arg.name in supplied:
            values[arg.name] = str(supplied[arg.name])
        elif arg.value is not None:
            values[arg.name] = arg.value
        elif arg.secret is not None:
            name, key = arg.secret
            if secrets is None or name not in secrets:
                raise AnalysisSpecError(f'secrets "{name}" not found')
            if key not in secrets[name]:
                raise AnalysisSpecError(f"key '{key}' does not exist in secret '{name}'")
            values[arg.name] = secrets[name][key]
            hidden.add(values[arg.name])
        else:
            raise AnalysisSpecError(f"args.{arg.name} was not resolved")
    return values, frozenset(hidden)


_TAG = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)


def substitute(metric: Mapping[str, Any], args: Mapping[str, str]) -> dict[str, Any]:
    """Replace every `{{ args.NAME }}` in every string field, the way Argo does (8).

    The metric is serialised to JSON, tags are replaced by JSON-escaped values (so quotes
    and newlines land literally), and the result is parsed back.
    """
    text = json.dumps(metric)
    unresolved: list[str] = []

    def replace(m: re.Match[str]) -> str:
        tag = m.group(1).strip()
        if tag.startswith("args.") and tag[5:] in args:
            return json.dumps(args[tag[5:]])[1:-1]
        unresolved.append(m.group(1))
        return ""

    text = _TAG.sub(replace, text)
    if unresolved:
        raise AnalysisSpecError(f"failed to resolve {{{{{unresolved[-1]}}}}}")
    if "{{" in text:
        raise AnalysisSpecError('Cannot find end tag="}}" in the template')
    out: dict[str, Any] = json.loads(text)
    return out


# ----------------------------------------------------------------------------- validation (11)


def _int_or_string(metric: Mapping[str, Any], key: str, default: int) -> int:
    raw = metric.get(key)
    if raw is None:
        return default
    if isinstance(raw, bool):
        raise ValueError(f"{key} must be an integer, got {raw!r}")
    if isinstance(raw, int):
        return raw
    if isinstance(raw, str) and re.fullmatch(r"[+-]?\d+", raw.strip()):
        return int(raw)
    # Go's intstr would read this as 0; a typo in a gate is better reported than ignored.
    raise ValueError(f"{key} must be an integer, got {raw!r}")


def _duration(metric: Mapping[str, Any], key: str) -> float | None:
    raw = metric.get(key)
    if raw in (None, ""):
        return None
    try:
        return parse_duration(str(raw))
    except ValueError as e:
        raise ValueError(f"invalid {key} string: {e}") from None


_UNSUPPORTED_PROMETHEUS = ("rangeQuery", "authentication")


def _prometheus(provider: Mapping[str, Any]) -> PrometheusSpec:
    names = sorted(k for k, v in provider.items() if v is not None)
    if not names:
        raise ValueError("no provider specified")
    if len(names) > 1:
        raise ValueError("multiple providers specified")
    if names != ["prometheus"]:
        raise ValueError(f"provider {names[0]!r} is not supported by the local runner")
    prom = provider["prometheus"]
    for key in _UNSUPPORTED_PROMETHEUS:
        if prom.get(key):
            raise ValueError(f"prometheus.{key} is not supported by the local runner")
    timeout = prom.get("timeout")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int)):
        raise ValueError(f"prometheus.timeout must be integer seconds, got {timeout!r}")
    return PrometheusSpec(
        query=str(prom.get("query") or ""),
        address=str(prom.get("address") or ""),
        timeout=timeout,
        headers=tuple((str(h["key"]), str(h["value"])) for h in prom.get("headers") or ()),
        insecure=bool(prom.get("insecure", False)),
    )


def _metric(raw: Mapping[str, Any]) -> MetricSpec:
    count = _int_or_string(raw, "count", 0)
    failure = _int_or_string(raw, "failureLimit", 0)
    inconclusive = _int_or_string(raw, "inconclusiveLimit", 0)
    errors = _int_or_string(raw, "consecutiveErrorLimit", DEFAULT_CONSECUTIVE_ERROR_LIMIT)
    successes = _int_or_string(raw, "consecutiveSuccessLimit", 0)
    if count < 0:
        raise ValueError("count must be >= 0")
    if successes < 0:
        raise ValueError("consecutiveSuccessLimit must be >= 0")
    if failure < -1:
        raise ValueError("failureLimit must be >= -1")
    if failure == -1 and successes == 0:
        raise ValueError("failureLimit -1 requires consecutiveSuccessLimit > 0")
    if inconclusive < 0:
        raise ValueError("inconclusiveLimit must be >= 0")
    if errors < 0:
        raise ValueError("consecutiveErrorLimit must be >= 0")
    if count > 0:
        if failure >= 0 and count < failure + successes:
            raise ValueError("count must be >= failureLimit + consecutiveSuccessLimit")
        if failure == -1 and count < successes:
            raise ValueError("count must be >= consecutiveSuccessLimit")
        if count < inconclusive:
            raise ValueError("count must be >= inconclusiveLimit")
    interval = _duration(raw, "interval")
    if count > 1 and interval is None:
        raise ValueError("interval must be specified when count > 1")
    return MetricSpec(
        name=str(raw.get("name", "")),
        prometheus=_prometheus(raw.get("provider") or {}),
        interval=interval,
        initial_delay=_duration(raw, "initialDelay"),
        count=count,
        failure_limit=failure,
        inconclusive_limit=inconclusive,
        consecutive_error_limit=errors,
        consecutive_success_limit=successes,
        success_condition=str(raw.get("successCondition") or ""),
        failure_condition=str(raw.get("failureCondition") or ""),
    )


def _match_rules(kind: str, rules: Sequence[str], names: Sequence[str]) -> list[set[str]]:
    """Names matched by each rule: Go regexps matched unanchored (`error` hits `p99-error`)."""
    matched: list[set[str]] = []
    for i, rule in enumerate(rules):
        if rule in rules[:i]:
            raise AnalysisSpecError(f"Analysis spec invalid: {kind}[{i}]: duplicate rule {rule!r}")
        try:
            pattern = re.compile(rule)
        except re.error as e:
            raise AnalysisSpecError(f"Analysis spec invalid: {kind}[{i}]: {e}") from None
        hits = {n for n in names if pattern.search(n)}
        if not hits:
            raise AnalysisSpecError(
                f"Analysis spec invalid: {kind}[{i}]: Rule didn't match any metric name(s)"
            )
        matched.append(hits)
    return matched


def prepare_run(
    templates: AnalysisTemplate | Sequence[AnalysisTemplate],
    args: Mapping[str, str] | None = None,
    *,
    dry_run: Sequence[str] = (),
    measurement_retention: Sequence[tuple[str, int]] = (),
    secrets: Mapping[str, Mapping[str, str]] | None = None,
) -> RunSpec:
    """Merge args, substitute, validate (sections 8 and 11); raises AnalysisSpecError.

    ``dry_run``/``measurement_retention`` are the Rollout's own rules, added to the templates'.
    """
    if isinstance(templates, AnalysisTemplate):
        templates = [templates]
    raw_metrics = [m for t in templates for m in t.metrics]
    seen: set[str] = set()
    for m in raw_metrics:
        if m.get("name") in seen:
            raise AnalysisSpecError(f"two metrics have the same name '{m.get('name')}'")
        seen.add(str(m.get("name")))
    values, hidden = resolve_args(templates, args or {}, secrets)
    try:
        resolved = [substitute(m, values) for m in raw_metrics]
    except AnalysisSpecError as e:
        raise AnalysisSpecError(f"Unable to resolve metric arguments: {e}") from None
    if not resolved:
        raise AnalysisSpecError("Analysis spec invalid: no metrics specified")
    metrics: list[MetricSpec] = []
    for i, raw in enumerate(resolved):
        try:
            metrics.append(_metric(raw))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise AnalysisSpecError(f"Analysis spec invalid: metrics[{i}]: {e}") from None
    names = [m.name for m in metrics]
    dry_rules = [*dry_run, *(r for t in templates for r in t.dry_run)]
    dry = set().union(*_match_rules("dryRun", dry_rules, names))
    retention_rules = [*measurement_retention]
    retention_rules += [r for t in templates for r in t.measurement_retention]
    matched = _match_rules("measurementRetention", [r for r, _ in retention_rules], names)
    limits: dict[str, int] = {}
    for (_, limit), hits in zip(retention_rules, matched, strict=True):
        for name in hits:
            if limit > 0:
                limits[name] = limit
    final = tuple(
        MetricSpec(**{**m.__dict__, "dry_run": m.name in dry,
                      "measurement_limit": limits.get(m.name, DEFAULT_MEASUREMENT_LIMIT)})
        for m in metrics
    )  # fmt: skip
    return RunSpec(final, values, hidden)


def check_conditions(spec: RunSpec) -> list[str]:
    """Conditions that do not parse (for CI; at run time each such measurement is Error)."""
    problems = []
    for m in spec.metrics:
        for which, text in (("successCondition", m.success_condition),
                            ("failureCondition", m.failure_condition)):  # fmt: skip
            if text:
                try:
                    parse(text)
                except ConditionError as e:
                    problems.append(f"metric {m.name!r} {which}: {e}")
    return problems


# ----------------------------------------------------------------------------- Rollouts


@dataclass(frozen=True)
class RolloutAnalysis:
    """An analysis a Rollout asks for: a step's (step_index set) or the background one."""

    templates: tuple[tuple[str, bool], ...]  # (templateName, clusterScope)
    args: tuple[Mapping[str, Any], ...] = ()
    dry_run: tuple[str, ...] = ()
    measurement_retention: tuple[tuple[str, int], ...] = ()
    step_index: int | None = None
    starting_step: int | None = None  # background analysis only


def _analysis(raw: Mapping[str, Any], step: int | None) -> RolloutAnalysis:
    return RolloutAnalysis(
        templates=tuple(
            (str(t["templateName"]), bool(t.get("clusterScope", False)))
            for t in raw.get("templates") or ()
        ),
        args=tuple(raw.get("args") or ()),
        dry_run=_rules(raw.get("dryRun")),
        measurement_retention=_retention(raw.get("measurementRetention")),
        step_index=step,
        starting_step=None if step is not None else raw.get("startingStep"),
    )


def rollout_analyses(rollout: Mapping[str, Any]) -> list[RolloutAnalysis]:
    """The canary analyses of a Rollout: one per analysis step, then the background one."""
    canary = ((rollout.get("spec") or {}).get("strategy") or {}).get("canary") or {}
    found = [
        _analysis(step["analysis"], i)
        for i, step in enumerate(canary.get("steps") or ())
        if step.get("analysis")
    ]
    if canary.get("analysis"):
        found.append(_analysis(canary["analysis"], None))
    return found


def _field(rollout: Mapping[str, Any], path: str) -> str:
    # Downward-API style `metadata.labels['env']` as well as plain dotted paths (8).
    parts = re.findall(r"\[\s*'([^']*)'\s*\]|\[\s*\"([^\"]*)\"\s*\]|([^.\[\]]+)", path)
    node: Any = rollout
    for quoted, dquoted, plain in parts:
        key = quoted or dquoted or plain
        if not isinstance(node, Mapping) or key not in node:
            raise AnalysisSpecError(f"fieldPath {path!r} not found in the Rollout")
        node = node[key]
    if isinstance(node, Mapping | list):
        raise AnalysisSpecError(f"fieldPath {path!r} is not a scalar")
    return str(node)


def rollout_args(
    analysis: RolloutAnalysis, rollout: Mapping[str, Any], pod_hashes: Mapping[str, str]
) -> dict[str, str]:
    """Values of a Rollout analysis's args: `value`, `podTemplateHashValue`, `fieldRef` (8).

    ``pod_hashes`` maps "Stable"/"Latest" to the ReplicaSets' rollouts-pod-template-hash.
    """
    values: dict[str, str] = {}
    for arg in analysis.args:
        name = str(arg["name"])
        source = arg.get("valueFrom") or {}
        if arg.get("value") is not None:
            values[name] = str(arg["value"])
        elif "podTemplateHashValue" in source:
            which = str(source["podTemplateHashValue"])
            if which not in pod_hashes:
                raise AnalysisSpecError(f"args.{name}: no {which} pod template hash supplied")
            values[name] = pod_hashes[which]
        elif "fieldRef" in source:
            values[name] = _field(rollout, str(source["fieldRef"]["fieldPath"]))
    return values


def select_templates(
    analysis: RolloutAnalysis, available: Iterable[AnalysisTemplate]
) -> list[AnalysisTemplate]:
    """The templates an analysis references, in order (clusterScope picks the cluster kind)."""
    pool = list(available)
    chosen = []
    for name, cluster in analysis.templates:
        kind = "ClusterAnalysisTemplate" if cluster else "AnalysisTemplate"
        match = next((t for t in pool if t.name == name and t.kind == kind), None)
        if match is None:
            raise AnalysisSpecError(f'{kind} "{name}" not found')
        chosen.append(match)
    return chosen
