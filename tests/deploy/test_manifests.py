"""deploy/k8s: every manifest against its strict schema, the section-11 rules on the real
files, and the facts the release plan relies on (steps, gates, metric names, ports, HA)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from router.telemetry import LATENCY_BUCKETS
from tests.deploy import flags_configmap, rules
from tests.deploy.conftest import (
    DEPLOY,
    NO_SCHEMA,
    PROMTOOL_MISSING,
    manifest_paths,
    only,
    promtool,
    schema_errors,
    schema_index,
)
from tests.deploy.rules import Doc

LOCAL_ARGS_ANNOTATION = "ripcord/local-args"
SELECTOR_RE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{([^}]*)\}")
MATCHER_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"([^"]*)"')
# Labels that come from scraping or from the histogram itself, not from the instrument.
SCRAPE_LABELS = {"job", "instance", "rollouts_pod_template_hash", "le"}


def template(docs: list[Doc]) -> dict[str, Any]:
    return only(docs, "AnalysisTemplate", "payment-router-slo").body


def local_args(tmpl: dict[str, Any]) -> dict[str, str]:
    args: dict[str, str] = json.loads(tmpl["metadata"]["annotations"][LOCAL_ARGS_ANNOTATION])
    return args


def resolved_queries(tmpl: dict[str, Any], args: dict[str, str]) -> dict[str, str]:
    values = {**rules.template_args(tmpl, args)}
    out = {}
    for metric in tmpl["spec"]["metrics"]:
        resolved, errors = rules.substitute(metric, values)
        assert not errors, errors
        out[metric["name"]] = resolved["provider"]["prometheus"]["query"]
    return out


def k8s_args(tmpl: dict[str, Any]) -> dict[str, str]:
    return {"canary-value": "6d4f8b9c7"}  # what podTemplateHashValue: Latest supplies


# -- schemas ------------------------------------------------------------------------------------


def test_every_manifest_matches_its_strict_schema(docs: list[Doc]) -> None:
    assert len(manifest_paths()) >= 4, manifest_paths()
    checked = 0
    for doc in docs:
        if doc.type_key in NO_SCHEMA:
            continue
        assert doc.type_key in schema_index(), (
            f"{doc}: no strict schema for {doc.type_key} in ../shared/schemas/index.json; "
            "use a kind it covers, or add a rule and list it in NO_SCHEMA"
        )
        assert schema_errors(doc) == [], f"{doc}"
        checked += 1
    kinds = {d.kind for d in docs}
    assert {"Deployment", "Service", "PodDisruptionBudget", "ConfigMap", "Rollout"} <= kinds
    assert "AnalysisTemplate" in kinds
    assert checked == len(docs) - 1  # everything but the Istio VirtualService


@pytest.mark.parametrize(
    ("kind", "mutate", "expected"),
    [
        (
            "AnalysisTemplate",
            lambda b: b["spec"]["metrics"][0].update(sucessCondition="true"),
            "sucessCondition",
        ),
        (
            "AnalysisTemplate",
            lambda b: b["spec"]["metrics"][0]["provider"]["prometheus"].update(timeout="30s"),
            "30s",
        ),
        ("Rollout", lambda b: b["metadata"].update(lables={"a": "b"}), "lables"),
        (
            "Rollout",
            lambda b: b["spec"]["strategy"].update({"unknown-strategy": {}}),
            "unknown-strategy",
        ),
        ("Deployment", lambda b: b["spec"].update(replica=3), "replica"),
        ("ConfigMap", lambda b: b["data"].update(answer=42), "42"),
        ("Service", lambda b: b["spec"]["ports"][0].update(port="grpc"), "grpc"),
        ("PodDisruptionBudget", lambda b: b["spec"].update(maxUnavailable=[1]), "[1]"),
    ],
)
def test_the_schemas_are_strict(docs: list[Doc], kind: str, mutate: Any, expected: str) -> None:
    doc = next(d for d in docs if d.kind == kind)
    mutate(doc.body)
    errors = schema_errors(doc)
    assert any(expected in e for e in errors), errors


# -- section 11 on the real files ---------------------------------------------------------------


def test_the_real_manifests_pass_every_controller_rule(docs: list[Doc]) -> None:
    rollout = only(docs, "Rollout", "payment-router").body
    tmpl = template(docs)
    services = {d.name: d.body for d in docs if d.kind == "Service"}
    virtual_services = {d.name: d.body for d in docs if d.kind == "VirtualService"}
    assert rules.rollout_errors(rollout) == []
    assert rules.template_errors(tmpl) == []
    assert rules.template_errors(tmpl, k8s_args(tmpl)) == []
    assert rules.template_errors(tmpl, local_args(tmpl)) == []
    assert rules.analysis_ref_errors(rollout, {tmpl["metadata"]["name"]: tmpl}, {}) == []
    assert rules.service_errors(rollout, services) == []
    assert rules.virtual_service_errors(rollout, virtual_services, "payments") == []
    assert rules.workload_selector_errors(docs) == []


# -- the release plan ---------------------------------------------------------------------------


def test_rollout_steps_are_the_release_schedule(docs: list[Doc]) -> None:
    steps = only(docs, "Rollout").body["spec"]["strategy"]["canary"]["steps"]
    kinds = [next(iter(s)) for s in steps]
    weights = [s["setWeight"] for s in steps if "setWeight" in s]
    assert weights == [1, 5, 25, 50, 100]
    # every weight is followed by an analysis of the SLO template, before the next weight
    for i, step in enumerate(steps):
        if "setWeight" in step:
            assert kinds[i + 1] == "analysis", (
                f"steps[{i}] setWeight {step['setWeight']} has no gate"
            )
            refs = steps[i + 1]["analysis"]["templates"]
            assert [r["templateName"] for r in refs] == ["payment-router-slo"]
    # one indefinite pause, after the 50% gate and before 100%: `promote` is what moves on
    pauses = [i for i, s in enumerate(steps) if "pause" in s]
    assert len(pauses) == 1 and steps[pauses[0]]["pause"] == {}
    assert steps[pauses[0] - 1].get("analysis") and steps[pauses[0] - 2] == {"setWeight": 50}
    assert steps[pauses[0] + 1] == {"setWeight": 100}


def test_rollout_aborts_instead_of_hanging_and_routes_per_request(docs: list[Doc]) -> None:
    spec = only(docs, "Rollout").body["spec"]
    canary = spec["strategy"]["canary"]
    assert spec["progressDeadlineAbort"] is True
    assert canary["trafficRouting"]["istio"]["virtualService"]["routes"] == ["primary"]
    for step in canary["steps"]:
        if "analysis" in step:
            assert step["analysis"]["args"] == [
                {"name": "canary-value", "valueFrom": {"podTemplateHashValue": "Latest"}}
            ]


def _metric(tmpl: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(m for m in tmpl["spec"]["metrics"] if m["name"] == name)
    return found


def test_analysis_gates_are_the_slos(docs: list[Doc]) -> None:
    tmpl = template(docs)
    error, p99 = _metric(tmpl, "error-rate"), _metric(tmpl, "p99-latency")
    shadow = _metric(tmpl, "shadow-status-mismatch")
    assert error["successCondition"] == "len(result) > 0 && result[0] <= 0.01"
    assert error["failureCondition"] == "len(result) > 0 && result[0] > 0.01"
    assert p99["successCondition"] == "len(result) > 0 && result[0] < 0.2"
    assert p99["failureCondition"] == "len(result) > 0 && result[0] >= 0.2"
    assert "result[0] > 0.001" in shadow["failureCondition"]
    assert "histogram_quantile(0.99," in p99["provider"]["prometheus"]["query"]
    # "sustained for 5 minutes": 5 checks of a trailing 5 m window, 1 m apart, none may fail
    defaults = rules.dummy_args(tmpl)
    assert (defaults["window"], defaults["interval"], defaults["count"]) == ("5m", "1m", "5")
    gates = [m for m in tmpl["spec"]["metrics"] if m["name"] != "shadow-acquirer-divergence"]
    for metric in gates:
        assert metric["failureLimit"] == 0, metric["name"]
        # a dead Prometheus is Error after 3 tries (about 20-30 s), which aborts: never a pass
        assert metric["consecutiveErrorLimit"] == 2 and metric["inconclusiveLimit"] == 1
        assert metric["interval"] == "{{args.interval}}" and metric["count"] == "{{args.count}}"
        assert "[{{args.window}}]" in metric["provider"]["prometheus"]["query"]
        assert metric["provider"]["prometheus"]["address"] == "{{args.prometheus-address}}"
    # the only dry-run metric is the informational one
    assert tmpl["spec"]["dryRun"] == [{"metricName": "^shadow-acquirer-divergence$"}]


def _guarded(condition: str) -> bool:
    """Every `result[0]` is reached only when the vector is not empty (short-circuit)."""
    if condition.startswith("len(result) == 0 ||"):
        return True
    return all(
        "result[0]" not in clause or clause.strip().startswith("len(result) > 0 &&")
        for clause in condition.split("||")
    )


def test_conditions_guard_empty_results(docs: list[Doc]) -> None:
    """Every index into `result` is guarded, and both conditions are set, so no data is
    Inconclusive (a pause), not an Error that would abort (spec 6.3, 12.2)."""
    assert not _guarded("result[0] <= 0.01") and not _guarded("isNaN(result[0]) || true")
    for metric in template(docs)["spec"]["metrics"]:
        conditions = [metric.get(f) for f in ("successCondition", "failureCondition")]
        if metric["name"] == "shadow-acquirer-divergence":  # dry run, report only
            assert conditions == [None, None]
            continue
        assert all(conditions), f"{metric['name']}: set both conditions"
        for condition in conditions:
            assert _guarded(str(condition)), f"{metric['name']}: unguarded {condition!r}"
        query = metric["provider"]["prometheus"]["query"]
        if " / " in query or "\n/\n" in query:  # a ratio whose numerator may not exist yet
            assert "or vector(0)" in query, metric["name"]


def test_p99_threshold_is_a_bucket_edge_of_the_router_histogram(docs: list[Doc]) -> None:
    condition = _metric(template(docs), "p99-latency")["successCondition"]
    threshold = float(re.search(r"result\[0\] < ([0-9.]+)", condition).group(1))  # type: ignore[union-attr]
    assert threshold in LATENCY_BUCKETS
    assert max(LATENCY_BUCKETS) > threshold  # else histogram_quantile caps at the threshold


def _documented_series() -> dict[str, set[str]]:
    """deploy/METRICS.md: series name -> the label names its row documents."""
    series: dict[str, set[str]] = {}
    for line in (DEPLOY / "METRICS.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`"):
            continue
        labels = set(re.findall(r"`([a-z][a-z0-9_]*)`", cells[2]))
        for name in re.findall(r"`([^`]+)`", cells[0]):
            parts = name.split("/")
            base = re.sub(r"_(bucket|sum|count)$", "", parts[0])
            for part in parts:
                full = base + part if part.startswith("_") else part
                series[full] = labels
    return series


def test_every_queried_metric_and_label_is_documented(docs: list[Doc]) -> None:
    documented = _documented_series()
    assert "payments_request_duration_seconds_bucket" in documented  # the parser works
    assert "payments_request_duration_seconds_count" in documented
    tmpl = template(docs)
    for args in (k8s_args(tmpl), local_args(tmpl)):
        for name, query in resolved_queries(tmpl, args).items():
            selectors = SELECTOR_RE.findall(query)
            assert selectors, f"{name}: no metric selector found in {query}"
            for series, matchers in selectors:
                assert series in documented, f"{name}: {series} is not in deploy/METRICS.md"
                for label, op, value in MATCHER_RE.findall(matchers):
                    if op == "=~" and re.fullmatch(value, ""):
                        continue  # also matches series without the label: by design
                    assert label in documented[series] | SCRAPE_LABELS, (
                        f"{name}: label {label} of {series} is not in deploy/METRICS.md"
                    )
            for label in re.findall(r"by \(([^)]*)\)", query):
                assert {x.strip() for x in label.split(",")} <= SCRAPE_LABELS | {"engine"}


def test_resolved_queries_are_valid_promql(docs: list[Doc], tmp_path: Path) -> None:
    """The queries, with the Kubernetes and the local arguments filled in, parse as PromQL
    (`promtool check rules` on them as recording rules)."""
    tool = promtool()
    tmpl = template(docs)
    rules_doc: dict[str, Any] = {"groups": []}
    for label, args in (("k8s", k8s_args(tmpl)), ("local", local_args(tmpl))):
        queries = resolved_queries(tmpl, args)
        for query in queries.values():
            assert query.count("(") == query.count(")") and "{{" not in query
        rules_doc["groups"].append(
            {
                "name": label,
                "rules": [
                    {"record": f"ripcord:{name.replace('-', '_')}", "expr": query}
                    for name, query in queries.items()
                ],
            }
        )
    if tool is None:  # checked structurally above only
        # `make test` installs prometheus (and promtool); a silent pass here would hide a
        # broken config, so a missing promtool fails.
        pytest.fail(PROMTOOL_MISSING)
    path = tmp_path / "queries.rules.yml"
    path.write_text(json.dumps(rules_doc))
    done = subprocess.run([tool, "check", "rules", str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_local_and_k8s_runs_use_the_same_queries(docs: list[Doc]) -> None:
    tmpl = template(docs)
    local, k8s = local_args(tmpl), k8s_args(tmpl)
    assert set(local) <= set(rules.template_args(tmpl)), "local-args names an undeclared arg"
    assert local["canary-label"] == "engine" and local["canary-value"] == "new"
    assert rules.go_duration_seconds(local["window"]) < rules.go_duration_seconds("5m")
    k8s_q, local_q = resolved_queries(tmpl, k8s), resolved_queries(tmpl, local)
    for name in k8s_q:
        normalise = [
            ("rollouts_pod_template_hash", "engine"),
            ('"6d4f8b9c7', '"new'),
            ("[5m]", "[30s]"),
        ]
        text = k8s_q[name]
        for old, new in normalise:
            text = text.replace(old, new)
        assert text == local_q[name], name


# -- the daemon ---------------------------------------------------------------------------------


def test_flags_configmap_is_the_flag_file(docs: list[Doc]) -> None:
    configmap = only(docs, "ConfigMap", "flagd-flags").body
    flag_file = DEPLOY / "flags" / "payments.flagd.json"
    assert configmap["data"] == {"payments.flagd.json": flag_file.read_text(encoding="utf-8")}
    assert flags_configmap.main(["--check"]) == 0, "run: python -m tests.deploy.flags_configmap"


def test_the_configmap_generator_round_trips_awkward_content() -> None:
    for content in ('{"a": 1}\n', '{"a": 1}', '  {"a":\t1}\n\n', "{}\r\n"):
        text = flags_configmap.render(content)
        assert yaml.safe_load(text)["data"]["payments.flagd.json"] == content


def test_daemon_is_highly_available_on_postgresql(docs: list[Doc]) -> None:
    deployment = only(docs, "Deployment", "flagd").body
    spec = deployment["spec"]
    assert spec["replicas"] >= 2
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    container = spec["template"]["spec"]["containers"][0]
    args = container["args"]
    assert args[:2] == ["flagd", "start"]
    state = args[args.index("--state") + 1]
    assert state.startswith("postgresql://") and ":" not in state.split("//")[1].split("@")[0], (
        "PostgreSQL state, and no password in the URL"
    )
    assert "--token-file" in args
    uri = args[args.index("--uri") + 1]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["template"]["spec"]["volumes"]}
    flags_volume = next(
        n for n, v in volumes.items() if v.get("configMap", {}).get("name") == "flagd-flags"
    )
    assert uri == f"file:{mounts[flags_volume]}/payments.flagd.json"
    assert not any("subPath" in m for m in container["volumeMounts"]), "subPath mounts never update"
    pdb = only(docs, "PodDisruptionBudget", "flagd").body["spec"]
    assert pdb.get("maxUnavailable") == 1 or pdb.get("minAvailable", 0) >= 1


def test_service_ports_are_the_daemon_and_router_ports(docs: list[Doc]) -> None:
    service = only(docs, "Service", "flagd").body["spec"]
    assert sorted(p["port"] for p in service["ports"]) == [8013, 8014, 8015]
    container = only(docs, "Deployment", "flagd").body["spec"]["template"]["spec"]["containers"][0]
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert named == {"grpc": 8013, "metrics": 8014, "sync": 8015}  # the daemon's defaults
    assert all(p["targetPort"] in named for p in service["ports"])
    router = only(docs, "Rollout").body["spec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in router["ports"]}
    args = router["args"]
    assert ports == {
        "grpc": int(args[args.index("--port") + 1]),
        "metrics": int(args[args.index("--metrics-port") + 1]),
    }
    assert args[args.index("--flagd") + 1] == "flagd.payments.svc:8015"


def test_the_runbook_address_is_the_daemon_service(docs: list[Doc]) -> None:
    runbook = (DEPLOY / "RUNBOOK.md").read_text()
    address = re.search(r"FLAGD_ADMIN=(\S+)", runbook).group(1)  # type: ignore[union-attr]
    service = only(docs, "Service", "flagd").body
    assert address == f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc:8013"
