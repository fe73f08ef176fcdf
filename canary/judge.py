"""The experiment judge: two-proportion z-test, SRM check and an always-valid sequential p-value.

Method and test vectors: `shared/notes/experiments.md` (cited below as "notes §N"). Standard
library only (`math.erfc`, `statistics.NormalDist`): the formulas are closed-form, and the notes'
vectors were computed the same way, so SciPy would only be a cross-check.

Order of the rules (the first that applies gives the verdict):

1. ``blocked-srm``: the exposures do not fit the configured split (chi-square p < 0.001). The
   data are broken (notes §5.1: "an SRM failure blocks the decision regardless of p"), and
   waiting does not repair them, so this outranks "not enough data".
2. ``insufficient-data``: a variant has fewer than 10,000 conversions, or the difference has
   no variance (zero conversions in both arms, notes §2 boundary cases).
3. ``treatment-wins`` / ``control-wins``: two-sided p < 0.05 (the sequential p-value instead
   when the experiment was declared sequential), the sign of the difference naming the winner.
4. ``no-difference``: otherwise (not significant; not proof that the variants are equal).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

ALPHA = 0.05  # two-sided significance level of the gate (notes §1, §2)
SRM_ALPHA = 0.001  # SRM blocks below this: GrowthBook's and Eppo's default (notes §5.1)
MIN_CONVERSIONS = 10_000  # per variant, before any verdict (issue 6; notes §2)
POWER = 0.80  # for the minimum detectable effect shown with a non-significant result (notes §6)
# GrowthBook's tuning N*: "set it to the total sample at which you expect to decide" (notes
# §4.1). 10,000 conversions per arm at the 5 % base rate of notes §6 is 200,000 per arm, so
# 400,000 in total; GrowthBook's own default (5,000) suits far smaller experiments.
TUNE_N = 400_000

_NORMAL = NormalDist()


class Verdict(enum.StrEnum):
    """What the judge concludes."""

    TREATMENT_WINS = "treatment-wins"
    CONTROL_WINS = "control-wins"
    NO_DIFFERENCE = "no-difference"
    INSUFFICIENT_DATA = "insufficient-data"
    BLOCKED_SRM = "blocked-srm"


@dataclass(frozen=True)
class Arm:
    """One variant's counts: exposures (assigned payments) and conversions (ACCEPTED)."""

    name: str
    exposures: int
    conversions: int

    def __post_init__(self) -> None:
        if self.exposures < 0 or self.conversions < 0:
            raise ValueError(f"{self.name}: counts must not be negative")
        if self.conversions > self.exposures:
            raise ValueError(
                f"{self.name}: {self.conversions} conversions > {self.exposures} exposures"
            )

    @property
    def rate(self) -> float | None:
        """Conversion rate, or None without exposures."""
        return self.conversions / self.exposures if self.exposures else None


@dataclass(frozen=True)
class ZTest:
    """Fixed-horizon two-proportion z-test of treatment against control (notes §1)."""

    difference: float  # p̂_t - p̂_c
    se_pooled: float  # under H₀: the test statistic's denominator
    se_unpooled: float  # for the confidence interval of the difference
    z: float
    p_two_sided: float
    p_one_sided: float  # H₁: treatment better; reported, never used by the gate (notes §1)
    ci_low: float
    ci_high: float
    mde: float  # absolute lift this sample detects with 80 % power at alpha (notes §6)


@dataclass(frozen=True)
class SrmCheck:
    """Pearson chi-square goodness of fit of the exposures against the split (notes §5.1)."""

    observed: dict[str, int]
    weights: dict[str, float]
    expected: dict[str, float]
    chi2: float  # math.inf when a variant with weight 0 has exposures
    df: int
    p: float


@dataclass(frozen=True)
class Sequential:
    """Always-valid p-value of the mixture SPRT, in GrowthBook's parameterisation (notes §4)."""

    tune_n: int  # N*, fixed for the life of the experiment (notes §4.1, §7.1)
    n: int  # total exposures of the two arms
    e_value: float  # Λ: reject when Λ ≥ 1/alpha
    p: float  # min(1, 1/Λ) at this look
    multiplier: float  # |z| above which p < alpha (the fixed test's is 1.959964)
    ci_low: float  # confidence sequence for the difference
    ci_high: float


@dataclass(frozen=True)
class Judgement:
    """The verdict with every number it rests on."""

    verdict: Verdict
    reason: str
    control: Arm
    treatment: Arm
    srm: SrmCheck
    ztest: ZTest | None  # None when the difference has no variance
    sequential: Sequential | None  # None unless requested (and computable)
    mode: str  # "fixed" or "sequential": which p-value decides
    alpha: float = ALPHA
    srm_alpha: float = SRM_ALPHA
    min_conversions: int = MIN_CONVERSIONS
    notes: tuple[str, ...] = ()

    @property
    def relative_lift(self) -> float | None:
        """(p̂_t - p̂_c) / p̂_c, or None when the control rate is 0 or unknown."""
        rc, rt = self.control.rate, self.treatment.rate
        if rc is None or rt is None or rc == 0:
            return None
        return (rt - rc) / rc

    @property
    def p_value(self) -> float | None:
        """The p-value that decides: the sequential one in sequential mode."""
        if self.mode == "sequential":
            return self.sequential.p if self.sequential else None
        return self.ztest.p_two_sided if self.ztest else None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary (non-finite numbers become null)."""
        z = self.ztest
        s = self.sequential
        return {
            "verdict": str(self.verdict),
            "reason": self.reason,
            "mode": self.mode,
            "alpha": self.alpha,
            "min_conversions": self.min_conversions,
            "variants": {
                arm.name: {
                    "role": role,
                    "exposures": arm.exposures,
                    "conversions": arm.conversions,
                    "rate": arm.rate,
                }
                for role, arm in (("control", self.control), ("treatment", self.treatment))
            },
            "difference": z.difference if z else _difference(self.control, self.treatment),
            "relative_lift": self.relative_lift,
            "ci": [z.ci_low, z.ci_high] if z else None,
            "z": z.z if z else None,
            "p": self.p_value,
            "p_fixed_two_sided": z.p_two_sided if z else None,
            "p_one_sided": z.p_one_sided if z else None,
            "mde": z.mde if z else None,
            "srm": {
                "p": self.srm.p,
                "chi2": _finite(self.srm.chi2),
                "df": self.srm.df,
                "threshold": self.srm_alpha,
                "observed": self.srm.observed,
                "weights": self.srm.weights,
                "expected": self.srm.expected,
            },
            "sequential": None
            if s is None
            else {
                "p": s.p,
                "e_value": _finite(s.e_value),
                "tune_n": s.tune_n,
                "n": s.n,
                "multiplier": s.multiplier,
                "ci": [s.ci_low, s.ci_high],
            },
            "notes": list(self.notes),
        }

    def render(self, title: str = "experiment") -> str:
        """A human-readable report, one fact per line."""
        c, t, z, s = self.control, self.treatment, self.ztest, self.sequential
        lines = [f"{title}: {self.verdict.value.upper()}", f"  {self.reason}", ""]
        width = max(len(c.name), len(t.name), len("variant"))
        lines.append(f"  {'variant':<{width}}  {'exposures':>11}  {'conversions':>11}  rate")
        for arm in (c, t):
            lines.append(
                f"  {arm.name:<{width}}  {arm.exposures:>11,}  {arm.conversions:>11,}  "
                f"{_pct(arm.rate)}"
            )
        lines.append("")
        level = f"{1 - self.alpha:.0%}"
        if z is not None:
            rel = self.relative_lift
            rel_text = f" ({rel:+.2%} relative)" if rel is not None else ""
            lines.append(
                f"  lift       {_pp(z.difference)}{rel_text}, {level} CI "
                f"[{_pp(z.ci_low)}, {_pp(z.ci_high)}]"
            )
            role = (
                f"significant below {self.alpha:g}"
                if self.mode == "fixed"
                else "fixed horizon: shown, not used"
            )
            lines.append(f"  z-test     z = {z.z:.4f}, two-sided p = {z.p_two_sided:.4g} ({role})")
            lines.append(
                f"  power      smallest lift detectable with {POWER:.0%} power: {_pp(z.mde)}"
            )
        else:
            lines.append("  z-test     not computable: the difference has no variance")
        if s is not None:
            lines.append(
                f"  sequential always-valid p = {s.p:.4g} (mSPRT, N* = {s.tune_n:,}; "
                f"significant when |z| > {s.multiplier:.4f}), {level} CS "
                f"[{_pp(s.ci_low)}, {_pp(s.ci_high)}]"
            )
        split = ", ".join(f"{k}={v:g}" for k, v in self.srm.weights.items())
        lines.append(
            f"  SRM        chi2 = {self.srm.chi2:.4f} (df {self.srm.df}), p = {self.srm.p:.4g} "
            f"against {split} (blocks below {self.srm_alpha:g})"
        )
        lines.append(
            f"  gate       {self.mode}: p < {self.alpha:g}, at least {self.min_conversions:,} "
            f"conversions per variant, SRM p >= {self.srm_alpha:g}"
        )
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines) + "\n"


# -- statistics ----------------------------------------------------------------------------------


def two_proportion_ztest(control: Arm, treatment: Arm, *, alpha: float = ALPHA) -> ZTest | None:
    """Pooled z and its p-values, unpooled CI (notes §1); None when SE₀ is 0 or an arm is empty."""
    n_c, x_c, n_t, x_t = (
        control.exposures,
        control.conversions,
        treatment.exposures,
        treatment.conversions,
    )
    if n_c == 0 or n_t == 0:
        return None
    pooled = (x_c + x_t) / (n_c + n_t)
    se0 = math.sqrt(pooled * (1 - pooled) * (1 / n_c + 1 / n_t))
    if se0 == 0:  # no conversions at all, or all converted: z is 0/0 (notes §2)
        return None
    p_c, p_t = x_c / n_c, x_t / n_t
    diff = p_t - p_c
    z = diff / se0
    se = math.sqrt(p_c * (1 - p_c) / n_c + p_t * (1 - p_t) / n_t)
    crit = _NORMAL.inv_cdf(1 - alpha / 2)
    return ZTest(
        difference=diff,
        se_pooled=se0,
        se_unpooled=se,
        z=z,
        # erfc, not 1 - Φ: the latter cancels to 0 below ~1e-12 (notes §1).
        p_two_sided=math.erfc(abs(z) / math.sqrt(2)),
        p_one_sided=0.5 * math.erfc(z / math.sqrt(2)),
        ci_low=diff - crit * se,
        ci_high=diff + crit * se,
        mde=se0 * (crit + _NORMAL.inv_cdf(POWER)),
    )


def chi2_sf(x: float, df: int) -> float:
    """Upper tail of the chi-square distribution with an integer df ≥ 1 (closed form)."""
    if df < 1:
        raise ValueError("df must be at least 1")
    if x <= 0:
        return 1.0
    if math.isinf(x):
        return 0.0
    y = x / 2
    # Q(df/2, y) for integer or half-integer shape: a finite series. Even df:
    # e^-y Σ_{i<df/2} y^i/i!; odd df: erfc(√y) + Σ_{i=1}^{(df-1)/2} e^-y y^(i-1/2)/Γ(i+1/2).
    # Terms in logs so that large y underflows to 0 instead of overflowing y^i.
    log_y = math.log(y)
    if df % 2 == 0:
        total = sum(math.exp(-y + i * log_y - math.lgamma(i + 1)) for i in range(df // 2))
    else:
        total = math.erfc(math.sqrt(y)) + sum(
            math.exp(-y + (i - 0.5) * log_y - math.lgamma(i + 0.5))
            for i in range(1, (df - 1) // 2 + 1)
        )
    return min(1.0, total)


def srm_check(observed: Mapping[str, int], weights: Mapping[str, float]) -> SrmCheck:
    """Chi-square goodness of fit of exposures against the configured weights (notes §5.1)."""
    if any(w < 0 or not math.isfinite(w) for w in weights.values()):
        raise ValueError("split weights must be finite and not negative")
    if sum(weights.values()) <= 0:
        raise ValueError("split weights must not all be 0")
    if any(n < 0 for n in observed.values()):
        raise ValueError("exposures must not be negative")
    names = list(weights) + [k for k in observed if k not in weights]
    obs = {k: int(observed.get(k, 0)) for k in names}
    w = {k: float(weights.get(k, 0.0)) for k in names}
    total_w, total_n = sum(w.values()), sum(obs.values())
    expected = {k: w[k] / total_w * total_n for k in names}
    # A variant the split never assigns (weight 0, or unknown to the split) that has exposures is
    # a mismatch no sample size excuses: chi2 = inf, p = 0. Without exposures it is left out.
    if any(w[k] == 0 and obs[k] > 0 for k in names):
        return SrmCheck(obs, w, expected, math.inf, max(1, len(names) - 1), 0.0)
    live = [k for k in names if w[k] > 0]
    df = len(live) - 1
    if df < 1 or total_n == 0:
        return SrmCheck(obs, w, expected, 0.0, max(df, 0), 1.0)
    chi2 = sum((obs[k] - expected[k]) ** 2 / expected[k] for k in live)
    return SrmCheck(obs, w, expected, chi2, df, chi2_sf(chi2, df))


def sequential_rho_squared(tune_n: int, alpha: float = ALPHA) -> float:
    """GrowthBook's mixing parameter rho² for N* (notes §4.1; = tau²/V in Johari's terms, §4.5)."""
    if tune_n <= 0:
        raise ValueError("N* must be positive")
    a = -2 * math.log(alpha)
    return (a + math.log(a + 1)) / tune_n


def msprt_e_value(z: float, n: int, tune_n: int = TUNE_N, alpha: float = ALPHA) -> float:
    """Λ = exp(rho²·N·z² / (2(Nrho²+1))) / sqrt(Nrho²+1), i.e. E with st² = N·z² (notes §4.1)."""
    r = sequential_rho_squared(tune_n, alpha) * n
    exponent = r * z * z / (2 * (r + 1))
    if exponent > 700:  # exp overflows; the p-value is 0 to double precision anyway
        return math.inf
    return math.exp(exponent) / math.sqrt(r + 1)


def msprt_multiplier(n: int, tune_n: int = TUNE_N, alpha: float = ALPHA) -> float:
    """The |z| at which Λ = 1/alpha: the half-width of the confidence sequence in SEs (§4.1)."""
    r = sequential_rho_squared(tune_n, alpha) * n
    return math.sqrt(2 * (r + 1) / r * math.log(math.sqrt(r + 1) / alpha))


def always_valid_p(looks: Sequence[tuple[float, int]], tune_n: int = TUNE_N) -> list[float]:
    """pₙ = min(pₙ₋₁, 1/Λₙ), p₀ = 1, over successive looks given as (z, N) (notes §4.3)."""
    out: list[float] = []
    p = 1.0
    for z, n in looks:
        p = min(p, 1 / msprt_e_value(z, n, tune_n))
        out.append(p)
    return out


def sequential_test(
    control: Arm, treatment: Arm, ztest: ZTest, *, tune_n: int = TUNE_N, alpha: float = ALPHA
) -> Sequential:
    """The mSPRT p-value and confidence sequence at this look (pooled z: reproduces §4.5)."""
    n = control.exposures + treatment.exposures
    e_value = msprt_e_value(ztest.z, n, tune_n, alpha)
    mult = msprt_multiplier(n, tune_n, alpha)
    return Sequential(
        tune_n=tune_n,
        n=n,
        e_value=e_value,
        # 1/Λ at a single look is itself valid at any stopping time (Ville's inequality); a caller
        # that keeps earlier looks can take the running minimum with always_valid_p.
        p=min(1.0, 1 / e_value),
        multiplier=mult,
        ci_low=ztest.difference - mult * ztest.se_unpooled,
        ci_high=ztest.difference + mult * ztest.se_unpooled,
    )


# -- the verdict ---------------------------------------------------------------------------------


def judge(
    control: Arm,
    treatment: Arm,
    split: Mapping[str, float],
    *,
    other_exposures: Mapping[str, int] | None = None,
    sequential: bool = False,
    tune_n: int = TUNE_N,
    alpha: float = ALPHA,
    srm_alpha: float = SRM_ALPHA,
    min_conversions: int = MIN_CONVERSIONS,
) -> Judgement:
    """Apply the gate: SRM, then the conversion floor, then significance (module docstring)."""
    if control.name == treatment.name:
        raise ValueError("control and treatment must be different variants")
    observed = {control.name: control.exposures, treatment.name: treatment.exposures}
    observed.update(other_exposures or {})
    srm = srm_check(observed, split)
    z = two_proportion_ztest(control, treatment, alpha=alpha)
    seq = (
        sequential_test(control, treatment, z, tune_n=tune_n, alpha=alpha)
        if sequential and z
        else None
    )
    mode = "sequential" if sequential else "fixed"
    # Notes §3: a fixed-horizon p-value checked every day is a peeking procedure.
    notes = (
        ()
        if sequential
        else (
            "fixed-horizon p-value: valid when read once at the planned horizon; looking "
            "repeatedly and stopping at the first p < 0.05 inflates false positives "
            "(declare the experiment sequential to peek)",
        )
    )

    def done(verdict: Verdict, reason: str) -> Judgement:
        return Judgement(
            verdict=verdict,
            reason=reason,
            control=control,
            treatment=treatment,
            srm=srm,
            ztest=z,
            sequential=seq,
            mode=mode,
            alpha=alpha,
            srm_alpha=srm_alpha,
            min_conversions=min_conversions,
            notes=notes,
        )

    if srm.p < srm_alpha:
        return done(
            Verdict.BLOCKED_SRM,
            f"sample ratio mismatch: exposures {_counts(srm.observed)} do not fit the split "
            f"(chi-square p = {srm.p:.3g} < {srm_alpha:g}); find the cause (exposure logging, "
            "retries, filters) before reading any result",
        )
    short = [a for a in (control, treatment) if a.conversions < min_conversions]
    if short:
        have = ", ".join(f"{a.name} has {a.conversions:,}" for a in short)
        return done(
            Verdict.INSUFFICIENT_DATA,
            f"{have}; at least {min_conversions:,} conversions per variant are needed "
            "before any verdict",
        )
    p = seq.p if seq else (z.p_two_sided if z else None)
    if z is None or p is None:
        return done(
            Verdict.INSUFFICIENT_DATA, "the difference has no variance (no conversions or all)"
        )
    label = "always-valid p" if seq else "two-sided p"
    if p < alpha:
        winner = Verdict.TREATMENT_WINS if z.difference > 0 else Verdict.CONTROL_WINS
        better = treatment if z.difference > 0 else control
        return done(winner, f"{better.name} converts better: {label} = {p:.4g} < {alpha:g}")
    return done(
        Verdict.NO_DIFFERENCE,
        f"no significant difference: {label} = {p:.4g} ≥ {alpha:g} (not proof of equality: "
        f"this sample detects lifts of {_pp(z.mde)} with {POWER:.0%} power)",
    )


# -- formatting ----------------------------------------------------------------------------------


def _difference(control: Arm, treatment: Arm) -> float | None:
    if control.rate is None or treatment.rate is None:
        return None
    return treatment.rate - control.rate


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _pct(rate: float | None) -> str:
    return "-" if rate is None else f"{rate:.3%}"


def _pp(diff: float) -> str:
    return f"{diff * 100:+.3f} pp"


def _counts(observed: Mapping[str, int]) -> str:
    return "/".join(f"{k}={v:,}" for k, v in observed.items())
