"""`ripcord experiment judge`: read an experiment's counts from Prometheus and judge them.

Counts (deploy/METRICS.md): exposures are `payments_experiment_exposures_total{variant}`,
conversions `payments_experiment_conversions_total{variant, outcome="ACCEPTED"}`, each summed
by variant over every router process. Which counts:

* without `--window`: the raw counter totals, `sum by (variant) (metric)`. Exact integers, but
  they cover the life of the router processes: a restart loses its counts, and exposures from
  before the split was set (the flag starts at treatment=0) are included - which the SRM check
  then reports, as it should.
* with `--window 6h`: `sum by (variant) (increase(metric[6h]))`. Survives restarts and can be
  confined to the experiment's phase, but Prometheus extrapolates to the window's edges (values
  are rounded to whole counts) and a conversion inside the window may belong to an exposure
  before it. Choose a window that starts after the 50/50 split took effect.

Both queries are evaluated at the same instant (`time=`), so the two counts agree with each
other. Exit codes: 0 a verdict (treatment-wins, control-wins, no-difference), 1 an error
(Prometheus unreachable or answering an error, unusable data), 2 usage, 3 insufficient-data,
4 blocked-srm.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import textwrap
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from canary import judge as j

DCC_FLAG = "payments.dynamic-currency.enabled"
DEFAULT_SPLIT = "treatment=50,control=50"  # the DCC experiment's split (shared/DESIGN.md)
DEFAULT_TIMEOUT = 10.0

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INSUFFICIENT, EXIT_SRM = 0, 1, 2, 3, 4
EXIT_CODES = {
    j.Verdict.TREATMENT_WINS: EXIT_OK,
    j.Verdict.CONTROL_WINS: EXIT_OK,
    j.Verdict.NO_DIFFERENCE: EXIT_OK,
    j.Verdict.INSUFFICIENT_DATA: EXIT_INSUFFICIENT,
    j.Verdict.BLOCKED_SRM: EXIT_SRM,
}

# A Prometheus duration ("1h", "90m", "1h30m"); checked because it is pasted into PromQL.
_DURATION = re.compile(r"(?:\d+(?:ms|s|m|h|d|w|y))+")
_NAME = re.compile(r"[A-Za-z0-9_.\-]+")

# (base URL, PromQL, evaluation time in unix seconds) -> the decoded JSON answer.
Fetch = Callable[[str, str, float], Any]


@dataclass(frozen=True)
class Experiment:
    """Where an experiment's counts live in Prometheus."""

    exposures: str  # metric with a `variant` label
    conversions: str  # metric with `variant` and the matcher below
    converted: str  # label matcher selecting a conversion


# The router exports experiment metrics for the DCC experiment only; any other flag would get
# these numbers under its name, so it is refused instead.
EXPERIMENTS = {
    DCC_FLAG: Experiment(
        exposures="payments_experiment_exposures_total",
        conversions="payments_experiment_conversions_total",
        converted='outcome="ACCEPTED"',
    )
}


class JudgeError(Exception):
    """A failure reading or using the counts (exit 1)."""


# -- Prometheus ----------------------------------------------------------------------------------


def make_fetch(timeout: float = DEFAULT_TIMEOUT) -> Fetch:
    """A urllib instant-query client for `/api/v1/query` (GET; POST is not needed here)."""

    def fetch(base_url: str, query: str, at: float) -> Any:
        params = urllib.parse.urlencode({"query": query, "time": f"{at:.3f}"})
        url = f"{base_url.rstrip('/')}/api/v1/query?{params}"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                return json.load(response)
        except urllib.error.HTTPError as exc:
            # Prometheus explains 400/422/503 in a JSON error envelope: keep its message.
            try:
                body = json.load(exc)
            except ValueError:
                raise JudgeError(f"Prometheus answered HTTP {exc.code} to {query!r}") from None
            if isinstance(body, dict) and "error" in body:
                return body
            raise JudgeError(f"Prometheus answered HTTP {exc.code} to {query!r}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise JudgeError(f"cannot reach Prometheus at {base_url}: {reason}") from None
        except ValueError:
            raise JudgeError(f"Prometheus sent something that is not JSON for {query!r}") from None

    return fetch


def queries(experiment: Experiment, window: str | None) -> tuple[str, str]:
    """The exposures and conversions queries (module docstring: totals or increase)."""
    exposures = experiment.exposures
    conversions = f"{experiment.conversions}{{{experiment.converted}}}"
    if window:
        exposures = f"increase({exposures}[{window}])"
        conversions = f"increase({conversions}[{window}])"
    return f"sum by (variant) ({exposures})", f"sum by (variant) ({conversions})"


def by_variant(answer: Any, query: str) -> dict[str, int]:
    """Counts per variant from an instant-query answer; an empty vector means no counts yet."""
    if not isinstance(answer, dict) or answer.get("status") != "success":
        error = answer.get("error", "no status") if isinstance(answer, dict) else "not an object"
        raise JudgeError(f"Prometheus refused {query!r}: {error}")
    data = answer.get("data") or {}
    if data.get("resultType") != "vector":
        raise JudgeError(f"{query!r}: expected a vector, got {data.get('resultType')!r}")
    counts: dict[str, int] = {}
    for series in data.get("result") or []:
        variant = series.get("metric", {}).get("variant")
        if variant is None:
            raise JudgeError(f"{query!r}: a series without a variant label")
        try:
            value = float(series["value"][1])
        except (KeyError, IndexError, TypeError, ValueError):
            raise JudgeError(f"{query!r}: unreadable sample {series!r}") from None
        if not math.isfinite(value) or value < 0:
            raise JudgeError(f"{query!r}: variant {variant!r} has the value {value}")
        # increase() extrapolates to fractional counts; the tests need whole ones.
        counts[variant] = round(value)
    return counts


# -- command line --------------------------------------------------------------------------------


def _split(text: str) -> dict[str, float]:
    weights: dict[str, float] = {}
    for part in text.split(","):
        name, sep, value = part.strip().partition("=")
        if not sep or not _NAME.fullmatch(name):
            raise argparse.ArgumentTypeError(f"{part.strip()!r}: write VARIANT=WEIGHT")
        try:
            weight = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
        if not math.isfinite(weight) or weight < 0:
            raise argparse.ArgumentTypeError(f"{part.strip()!r}: weights must be >= 0")
        if name in weights:
            raise argparse.ArgumentTypeError(f"{name!r} appears twice")
        weights[name] = weight
    if sum(weights.values()) <= 0:
        raise argparse.ArgumentTypeError("the weights must not all be 0")
    return weights


def _window(text: str) -> str:
    if not _DURATION.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a Prometheus duration such as 1h or 90m")
    return text


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError("must be more than 0 seconds")
    return value


def _url(text: str) -> str:
    if urllib.parse.urlsplit(text).scheme not in ("http", "https"):
        raise argparse.ArgumentTypeError(f"{text!r}: give an http:// or https:// address")
    return text


def build_parser(prog: str = "ripcord experiment") -> argparse.ArgumentParser:
    """The `ripcord experiment` argument parser."""
    parser = argparse.ArgumentParser(
        prog=prog, description="Judge A/B experiments from their Prometheus counts."
    )
    subs = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    p = subs.add_parser(
        "judge",
        help="the verdict of an experiment: z-test, SRM check, optional sequential p-value",
        description=textwrap.fill(
            "Read exposures and conversions (outcome ACCEPTED) per variant from Prometheus and "
            "apply the gate: a sample-ratio-mismatch check against the split (chi-square, "
            "blocks below p = 0.001), at least 10,000 conversions per variant, then a "
            "two-sided two-proportion z-test at p < 0.05 - or, with --sequential, an "
            "always-valid mSPRT p-value that may be read at every look. Without --window the "
            "raw counter totals are used; with it, increase() over the window.",
            88,
        ),
        epilog="exit codes: 0 verdict (treatment-wins, control-wins, no-difference), 1 error, "
        "2 usage, 3 insufficient-data, 4 blocked-srm\n\nexamples:\n"
        "  ripcord experiment judge --prometheus http://localhost:9090\n"
        "  ripcord experiment judge --prometheus http://prom:9090 --window 7d --sequential "
        "--json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--prometheus", required=True, type=_url, metavar="URL", help="e.g. http://localhost:9090"
    )
    p.add_argument(
        "--flag",
        default=DCC_FLAG,
        choices=sorted(EXPERIMENTS),
        metavar="KEY",
        help=f"the experiment's flag (default {DCC_FLAG})",
    )
    p.add_argument(
        "--split",
        type=_split,
        default=_split(DEFAULT_SPLIT),
        metavar="V=W,...",
        help=f"the configured weights, for the SRM check (default {DEFAULT_SPLIT})",
    )
    p.add_argument(
        "--control",
        default="control",
        metavar="VARIANT",
        help="the control variant (default control)",
    )
    p.add_argument(
        "--treatment",
        default="treatment",
        metavar="VARIANT",
        help="the treatment variant (default treatment)",
    )
    p.add_argument(
        "--window",
        type=_window,
        metavar="DURATION",
        help="count with increase() over this window instead of the raw totals",
    )
    p.add_argument(
        "--sequential",
        action="store_true",
        help="decide on the always-valid (mSPRT) p-value; declare it for the whole experiment",
    )
    p.add_argument(
        "--tune-n",
        type=_positive_int,
        default=j.TUNE_N,
        metavar="N",
        help="mSPRT tuning N*: total exposures expected at the decision; keep it fixed "
        f"(default {j.TUNE_N:,})",
    )
    p.add_argument(
        "--min-conversions",
        type=_positive_int,
        default=j.MIN_CONVERSIONS,
        metavar="N",
        help=f"conversion floor per variant (default {j.MIN_CONVERSIONS:,}; lower it only for "
        "rehearsals - the output states the floor used)",
    )
    p.add_argument(
        "--timeout",
        type=_seconds,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"per query (default {DEFAULT_TIMEOUT:g})",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of the report")
    return parser


def run_judge(
    args: argparse.Namespace, fetch: Fetch, now: float
) -> tuple[j.Judgement, dict[str, Any]]:
    """Query both counts at the same instant and judge them; returns the verdict and its source."""
    if args.control == args.treatment:
        raise ValueError("--control and --treatment must differ")
    missing = [v for v in (args.control, args.treatment) if v not in args.split]
    if missing:
        raise ValueError(f"--split has no weight for {', '.join(missing)}")
    q_exposures, q_conversions = queries(EXPERIMENTS[args.flag], args.window)
    exposures = by_variant(fetch(args.prometheus, q_exposures, now), q_exposures)
    conversions = by_variant(fetch(args.prometheus, q_conversions, now), q_conversions)
    try:
        control, treatment = (
            j.Arm(v, exposures.get(v, 0), conversions.get(v, 0))
            for v in (args.control, args.treatment)
        )
    except ValueError as exc:
        hint = " (the window starts after some exposures: widen it)" if args.window else ""
        raise JudgeError(f"inconsistent counts: {exc}{hint}") from None
    others = {k: v for k, v in exposures.items() if k not in (args.control, args.treatment)}
    judgement = j.judge(
        control,
        treatment,
        args.split,
        other_exposures=others,
        sequential=args.sequential,
        tune_n=args.tune_n,
        min_conversions=args.min_conversions,
    )
    source = {
        "prometheus": args.prometheus,
        "window": args.window,
        "time": now,
        "queries": {"exposures": q_exposures, "conversions": q_conversions},
    }
    return judgement, source


def main(
    argv: Sequence[str] | None = None,
    prog: str = "ripcord experiment",
    *,
    fetch: Fetch | None = None,
    clock: Callable[[], float] = time.time,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Run `ripcord experiment ARGV`; returns the exit code (module docstring)."""
    out, err = stdout or sys.stdout, stderr or sys.stderr
    parser = build_parser(prog)
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:  # --help (0) or a usage error (2, already printed)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        judgement, source = run_judge(args, fetch or make_fetch(args.timeout), clock())
    except ValueError as exc:
        print(f"{prog} judge: error: {exc}", file=err)
        return EXIT_USAGE
    except JudgeError as exc:
        print(f"{prog} judge: error: {exc}", file=err)
        return EXIT_ERROR
    if args.json:
        body = {"flag": args.flag, **judgement.to_dict(), "source": source}
        out.write(json.dumps(body, indent=2, ensure_ascii=False) + "\n")
    else:
        out.write(judgement.render(args.flag))
        counted = f"increase over {args.window}" if args.window else "raw counter totals"
        at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(source["time"]))
        out.write(f"  source     {args.prometheus}, {counted}, at {at}\n")
    return EXIT_CODES[judgement.verdict]


if __name__ == "__main__":
    sys.exit(main())
