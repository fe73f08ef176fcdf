"""Canary gates: replay Argo Rollouts AnalysisTemplates against a real Prometheus.

The contract is `shared/spec/analysis-semantics.md` (sections 4-9 for the run, 6 for the
conditions, 8 for args, 11 for validation). Modules:

* ``canary.condition``  the successCondition/failureCondition language (a safe expr subset).
* ``canary.prometheus`` instant queries and the mapping of responses to ``result``.
* ``canary.templates``  YAML loading, args merging, ``{{args.x}}`` substitution, validation.
* ``canary.analysis``   the AnalysisRun state machine and the loops that drive it.

API for a rollout driver
------------------------
Load the templates and, for a Rollout, the analyses it asks for::

    docs = load_documents(Path("deploy/k8s/rollout.yaml"))
    templates = templates_from_documents(docs)
    rollout = next(d for d in docs if d["kind"] == "Rollout")
    step = rollout_analyses(rollout)[0]            # .step_index, or None for background
    chosen = select_templates(step, templates)
    args = rollout_args(step, rollout, {"Latest": canary_hash, "Stable": stable_hash})

Blocking::

    run = run_analysis(chosen, args, PrometheusClient(), dry_run=step.dry_run,
                       on_measurement=lambda name, m, run: print(name, m.phase, m.value))
    run.phase        # Phase.SUCCESSFUL -> next step; FAILED/ERROR -> abort;
                     # INCONCLUSIVE -> pause for a human (spec 2)

Background, pollable and cancellable (a background analysis, or promotion mid-step)::

    handle = start_analysis(chosen, args, PrometheusClient())
    handle.run.phase     # Running until completed; immutable snapshot, any thread
    handle.terminate()   # spec.terminate: unfinished metrics end Successful (5.6)
    final = handle.wait(timeout=30)

Incremental, when the driver owns the loop (and the clock)::

    runner = AnalysisRunner.from_templates(chosen, args, client, clock=clock)
    while not runner.run.completed:
        runner.tick()                  # takes whatever is due now
        wake = runner.next_due()       # clock time of the next measurement
        ...                            # sleep until then, or runner.terminate()

Pure transitions, for tests and simulations: ``start_run(spec, now)``,
``apply_measurement(run, name, measurement)``, ``terminate_run(run, now)``,
``due_metrics(run, now)``, ``next_due(run)``. A missing required arg, an unresolved
``{{...}}`` or an invalid metric never queries anything: the run is Error with the reason
in ``run.message`` (``prepare_run`` raises AnalysisSpecError instead, for CI). Each metric's
substituted query is in ``run.result(name).metadata["ResolvedPrometheusQuery"]``;
``exit_code(run.phase)`` gives 0/1/2/3 for Successful/Failed/Error/Inconclusive.
"""

from canary.analysis import (
    AnalysisHandle,
    AnalysisRun,
    AnalysisRunner,
    Measurement,
    MetricResult,
    Phase,
    apply_measurement,
    apply_measurements,
    due_metrics,
    exit_code,
    next_due,
    run_analysis,
    start_analysis,
    start_run,
    terminate_run,
)
from canary.prometheus import PrometheusClient, PrometheusError, PrometheusSpec
from canary.templates import (
    AnalysisSpecError,
    AnalysisTemplate,
    MetricSpec,
    RunSpec,
    load_documents,
    load_templates,
    prepare_run,
    rollout_analyses,
    rollout_args,
    select_templates,
    templates_from_documents,
)

__all__ = [
    "AnalysisHandle",
    "AnalysisRun",
    "AnalysisRunner",
    "AnalysisSpecError",
    "AnalysisTemplate",
    "Measurement",
    "MetricResult",
    "MetricSpec",
    "Phase",
    "PrometheusClient",
    "PrometheusError",
    "PrometheusSpec",
    "RunSpec",
    "apply_measurement",
    "apply_measurements",
    "due_metrics",
    "exit_code",
    "load_documents",
    "load_templates",
    "next_due",
    "prepare_run",
    "rollout_analyses",
    "rollout_args",
    "run_analysis",
    "select_templates",
    "start_analysis",
    "start_run",
    "templates_from_documents",
    "terminate_run",
]
