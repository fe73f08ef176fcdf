"""deploy/prometheus: the local config scrapes the daemon and the router where they listen by
default, the Kubernetes variant keeps `rollouts_pod_template_hash`, and both pass
`promtool check config` (Debian package `prometheus`) as well as a structural check."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from flagd.daemon import DaemonConfig
from router.cli import build_parser as router_parser
from tests.deploy.conftest import DEPLOY, PROMTOOL_MISSING, promtool

LOCAL = DEPLOY / "prometheus" / "prometheus.yml"
K8S = DEPLOY / "prometheus" / "prometheus-k8s.yml"
JOBS = {"flagd", "payment-router"}

PROM_DURATION_RE = re.compile(r"^(?:\d+y)?(?:\d+w)?(?:\d+d)?(?:\d+h)?(?:\d+m)?(?:\d+s)?(?:\d+ms)?$")
RELABEL_ACTIONS = {
    "replace", "keep", "drop", "keepequal", "dropequal", "hashmod", "labelmap", "labeldrop",
    "labelkeep", "lowercase", "uppercase",
}  # fmt: skip
SCRAPE_KEYS = {
    "job_name", "scrape_interval", "scrape_timeout", "metrics_path", "scheme", "params",
    "honor_labels", "honor_timestamps", "static_configs", "kubernetes_sd_configs", "file_sd_configs",
    "relabel_configs", "metric_relabel_configs", "tls_config", "authorization", "basic_auth",
    "sample_limit", "label_limit",
}  # fmt: skip


def load(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(path.read_text())
    return doc


def structural_errors(config: Mapping[str, Any]) -> list[str]:
    """What promtool would refuse, as far as it can be said without it."""
    errors: list[str] = []
    glob = config.get("global") or {}
    durations = {
        k: glob[k]
        for k in ("scrape_interval", "scrape_timeout", "evaluation_interval")
        if k in glob
    }
    scrape_configs = config.get("scrape_configs") or []
    if not scrape_configs:
        errors.append("no scrape_configs")
    names = [sc.get("job_name") for sc in scrape_configs]
    if len(set(names)) != len(names) or not all(names):
        errors.append(f"job_name missing or repeated: {names}")
    for sc in scrape_configs:
        job = sc.get("job_name")
        errors += [f"{job}: unknown field {k}" for k in sorted(set(sc) - SCRAPE_KEYS)]
        durations |= {f"{job}.{k}": sc[k] for k in ("scrape_interval", "scrape_timeout") if k in sc}
        if not sc.get("static_configs") and not sc.get("kubernetes_sd_configs"):
            errors.append(f"{job}: no targets (static_configs or kubernetes_sd_configs)")
        for static in sc.get("static_configs") or []:
            for target in static.get("targets") or []:
                if not re.fullmatch(r"[A-Za-z0-9.-]+:\d{1,5}", str(target)):
                    errors.append(f"{job}: target {target!r} is not host:port")
        for sd in sc.get("kubernetes_sd_configs") or []:
            if sd.get("role") not in (
                "pod",
                "service",
                "endpoints",
                "endpointslice",
                "node",
                "ingress",
            ):
                errors.append(f"{job}: kubernetes_sd_configs role {sd.get('role')!r}")
        for rc in sc.get("relabel_configs") or []:
            action = rc.get("action", "replace")
            if action not in RELABEL_ACTIONS:
                errors.append(f"{job}: relabel action {action!r}")
            try:
                re.compile(str(rc.get("regex", "(.*)")))
            except re.error as exc:
                errors.append(f"{job}: relabel regex {rc.get('regex')!r}: {exc}")
            if action in ("keep", "drop") and not rc.get("source_labels"):
                errors.append(f"{job}: {action} needs source_labels")
            if action == "replace" and not rc.get("target_label"):
                errors.append(f"{job}: replace needs target_label")
    for key, value in durations.items():
        if not (isinstance(value, str) and value and PROM_DURATION_RE.fullmatch(value)):
            errors.append(f"{key}: {value!r} is not a Prometheus duration")
    return errors


def relabel(labels: Mapping[str, str], configs: list[dict[str, Any]]) -> dict[str, str] | None:
    """Prometheus target relabelling for the actions used here (None = target dropped)."""
    out = dict(labels)
    for rc in configs:
        action = rc.get("action", "replace")
        regex = re.compile(f"^(?:{rc.get('regex', '(.*)')})$")
        value = rc.get("separator", ";").join(out.get(s, "") for s in rc.get("source_labels") or [])
        if action == "keep" and not regex.match(value):
            return None
        if action == "drop" and regex.match(value):
            return None
        if action == "replace":
            match = regex.match(value)
            if match:
                out[rc["target_label"]] = match.expand(
                    rc.get("replacement", r"\1").replace("$", "\\")
                )
        if action == "labelmap":
            for name, val in list(out.items()):
                match = regex.match(name)
                if match:
                    out[match.expand(rc.get("replacement", r"\1").replace("$", "\\"))] = val
    return {k: v for k, v in out.items() if not k.startswith("__")}


def pod_target(app: str, port_name: str, extra: Mapping[str, str] = {}) -> dict[str, str]:
    """The labels Kubernetes pod discovery gives a target (label names sanitised as Prometheus
    does: `rollouts-pod-template-hash` -> `..._rollouts_pod_template_hash`)."""
    labels = {
        "__address__": "10.0.0.7:9464",
        "__meta_kubernetes_namespace": "payments",
        "__meta_kubernetes_pod_name": f"{app}-abc",
        "__meta_kubernetes_pod_phase": "Running",
        "__meta_kubernetes_pod_container_port_name": port_name,
        "__meta_kubernetes_pod_label_app": app,
    }
    for key, value in extra.items():
        labels["__meta_kubernetes_pod_label_" + re.sub(r"[^a-zA-Z0-9_]", "_", key)] = value
    return labels


def run_promtool(path: Path) -> subprocess.CompletedProcess[str]:
    tool = promtool()
    assert tool is not None
    return subprocess.run([tool, "check", "config", str(path)], capture_output=True, text=True)


# -- local ---------------------------------------------------------------------------------------


def test_local_config_scrapes_daemon_and_router_where_they_listen() -> None:
    config = load(LOCAL)
    assert structural_errors(config) == []
    targets = {
        sc["job_name"]: (
            sc.get("metrics_path", "/metrics"),
            [t for s in sc["static_configs"] for t in s["targets"]],
        )
        for sc in config["scrape_configs"]
    }
    daemon_port = DaemonConfig(uris=[]).management_port
    router_port = router_parser("router").parse_args(["serve"]).metrics_port
    assert targets == {
        "flagd": ("/metrics", [f"127.0.0.1:{daemon_port}"]),
        "payment-router": ("/metrics", [f"127.0.0.1:{router_port}"]),
    }
    # a short local window (30 s) must hold the 2 samples rate() needs, with room to spare
    assert int(config["global"]["scrape_interval"].rstrip("s")) * 4 <= 30


def test_local_config_passes_promtool() -> None:
    if promtool() is None:
        # `make test` installs prometheus (and promtool); a silent pass here would hide a
        # broken config, so a missing promtool fails.
        pytest.fail(PROMTOOL_MISSING)
    done = run_promtool(LOCAL)
    assert done.returncode == 0, done.stdout + done.stderr


# -- Kubernetes -----------------------------------------------------------------------------------


def test_k8s_config_keeps_the_pod_template_hash() -> None:
    config = load(K8S)
    assert structural_errors(config) == []
    jobs = {sc["job_name"]: sc for sc in config["scrape_configs"]}
    assert set(jobs) == JOBS
    router = jobs["payment-router"]["relabel_configs"]
    canary = relabel(
        pod_target("payment-router", "metrics", {"rollouts-pod-template-hash": "6d4f8b9c7"}), router
    )
    assert canary is not None and canary["rollouts_pod_template_hash"] == "6d4f8b9c7"
    assert canary["namespace"] == "payments" and canary["pod"] == "payment-router-abc"
    # only the metrics port of the router's pods; the daemon job takes the daemon's
    assert relabel(pod_target("payment-router", "grpc"), router) is None
    assert relabel(pod_target("flagd", "metrics"), router) is None
    assert relabel(pod_target("flagd", "metrics"), jobs["flagd"]["relabel_configs"]) is not None
    pending = {**pod_target("payment-router", "metrics"), "__meta_kubernetes_pod_phase": "Pending"}
    assert relabel(pending, router) is None


def test_k8s_config_passes_promtool(tmp_path: Path) -> None:
    """Debian's prometheus 2.42 is built without Kubernetes service discovery, so promtool
    checks everything else: the same file with each kubernetes_sd_configs swapped for a
    static target (relabel rules, durations, field names)."""
    if promtool() is None:
        # `make test` installs prometheus (and promtool); a silent pass here would hide a
        # broken config, so a missing promtool fails.
        pytest.fail(PROMTOOL_MISSING)
    config = load(K8S)
    for sc in config["scrape_configs"]:
        assert sc.pop("kubernetes_sd_configs")
        sc["static_configs"] = [{"targets": ["pod.invalid:9464"]}]
    swapped = tmp_path / "prometheus-k8s.static.yml"
    swapped.write_text(yaml.safe_dump(config))
    done = run_promtool(swapped)
    assert done.returncode == 0, done.stdout + done.stderr


def test_both_configs_use_the_jobs_the_analysis_expects() -> None:
    for path in (LOCAL, K8S):
        assert {sc["job_name"] for sc in load(path)["scrape_configs"]} == JOBS, path.name


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda c: c["global"].update(scrape_interval="5 s"), "not a Prometheus duration"),
        (lambda c: c["scrape_configs"][1].update(job_name="flagd"), "repeated"),
        (
            lambda c: c["scrape_configs"][0].update(scrape_intervall="5s"),
            "unknown field scrape_intervall",
        ),
        (
            lambda c: c["scrape_configs"][0]["static_configs"][0].update(targets=["localhost"]),
            "not host:port",
        ),
        (
            lambda c: c["scrape_configs"][0].update(
                relabel_configs=[{"action": "keepp", "source_labels": ["a"]}]
            ),
            "relabel action",
        ),
        (
            lambda c: c["scrape_configs"][0].update(
                relabel_configs=[{"action": "keep", "source_labels": ["a"], "regex": "("}]
            ),
            "relabel regex",
        ),
    ],
)
def test_structural_check_rejects_broken_configs(mutate: Any, expected: str) -> None:
    config = load(LOCAL)
    mutate(config)
    assert any(expected in e for e in structural_errors(config)), structural_errors(config)
