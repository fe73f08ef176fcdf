"""The experiment judge against the test vectors of shared/notes/experiments.md (§2, §4.5, §5.1, §6)."""

from __future__ import annotations

import itertools
import json
import math
import random

import pytest

from canary.judge import (
    Arm,
    Verdict,
    always_valid_p,
    chi2_sf,
    judge,
    msprt_e_value,
    msprt_multiplier,
    srm_check,
    two_proportion_ztest,
)

HALF = {"treatment": 50, "control": 50}


def arms(n_c: int, x_c: int, n_t: int, x_t: int) -> tuple[Arm, Arm]:
    return Arm("control", n_c, x_c), Arm("treatment", n_t, x_t)


# -- §2: fixed-horizon vectors -------------------------------------------------------------------

# id, n_c, x_c, n_t, x_t, z (pooled), p two-sided, p one-sided, verdict of the gate
VECTORS = [
    (
        "A",
        200_000,
        10_000,
        200_000,
        10_300,
        2.161140155,
        0.03068451453,
        0.01534225727,
        Verdict.TREATMENT_WINS,
    ),
    (
        "B",
        200_000,
        10_000,
        200_000,
        10_250,
        1.803053442,
        0.07137982205,
        0.03568991102,
        Verdict.NO_DIFFERENCE,
    ),
    (
        "C",
        200_000,
        9_999,
        200_000,
        10_400,
        2.882081485,
        0.003950575558,
        0.001975287779,
        Verdict.INSUFFICIENT_DATA,
    ),
    (
        "D",
        200_000,
        10_000,
        200_000,
        10_600,
        4.292388005,
        1.767617133e-05,
        8.838085667e-06,
        Verdict.TREATMENT_WINS,
    ),
]


@pytest.mark.parametrize(("vid", "n_c", "x_c", "n_t", "x_t", "z", "p2", "p1", "verdict"), VECTORS)
def test_vectors_fixed_horizon(vid, n_c, x_c, n_t, x_t, z, p2, p1, verdict):
    control, treatment = arms(n_c, x_c, n_t, x_t)
    t = two_proportion_ztest(control, treatment)
    assert t is not None
    # Tolerances suggested by the notes: |dz| < 1e-8, relative |dp| < 1e-7.
    assert abs(t.z - z) < 1e-8
    assert t.p_two_sided == pytest.approx(p2, rel=1e-7)
    assert t.p_one_sided == pytest.approx(p1, rel=1e-7)
    assert judge(control, treatment, HALF).verdict is verdict


def test_vector_a_intermediates_and_unpooled():
    t = two_proportion_ztest(*arms(200_000, 10_000, 200_000, 10_300))
    assert t is not None
    assert t.difference == pytest.approx(0.0015, rel=1e-12)
    assert t.se_pooled == pytest.approx(0.0006940780756, rel=1e-9)  # from p̂ = 0.05075
    assert t.se_unpooled == pytest.approx(0.0006940740234, rel=1e-9)
    z_unpooled = t.difference / t.se_unpooled
    assert abs(z_unpooled - 2.161152772) < 1e-8
    assert math.erfc(z_unpooled / math.sqrt(2)) == pytest.approx(0.03068354021, rel=1e-7)
    # The CI uses the unpooled SE (notes §1): diff ± 1.959964·SE.
    assert t.ci_low == pytest.approx(0.0015 - 1.959963985 * 0.0006940740234, rel=1e-8)
    assert t.ci_high == pytest.approx(0.0015 + 1.959963985 * 0.0006940740234, rel=1e-8)


@pytest.mark.parametrize(("x_t", "se0"), [(10_250, 0.0006932684139), (10_600, 0.0006989116539)])
def test_vectors_b_and_d_pooled_se(x_t, se0):
    t = two_proportion_ztest(*arms(200_000, 10_000, 200_000, x_t))
    assert t is not None
    assert t.se_pooled == pytest.approx(se0, rel=1e-9)


def test_vector_b_fails_two_sided_although_one_sided_would_pass():
    j = judge(*arms(200_000, 10_000, 200_000, 10_250), HALF)
    assert j.verdict is Verdict.NO_DIFFERENCE
    assert j.ztest is not None and j.ztest.p_one_sided < 0.05 < j.ztest.p_two_sided


def test_vector_c_is_blocked_by_the_floor_not_by_p():
    j = judge(*arms(200_000, 9_999, 200_000, 10_400), HALF)
    assert j.verdict is Verdict.INSUFFICIENT_DATA
    assert j.ztest is not None and j.ztest.p_two_sided < 0.05
    assert "control has 9,999" in j.reason


def test_exactly_ten_thousand_conversions_pass_the_floor():
    # Vector A's control has exactly 10,000 (">=", notes §2); one fewer fails.
    assert judge(*arms(200_000, 10_000, 200_000, 10_300), HALF).verdict is Verdict.TREATMENT_WINS
    assert (
        judge(*arms(200_000, 10_000, 200_000, 10_300), HALF, min_conversions=10_001).verdict
        is Verdict.INSUFFICIENT_DATA
    )


def test_p_equal_to_alpha_is_not_significant():
    control, treatment = arms(200_000, 10_000, 200_000, 10_300)
    t = two_proportion_ztest(control, treatment)
    assert t is not None
    assert judge(control, treatment, HALF, alpha=t.p_two_sided).verdict is Verdict.NO_DIFFERENCE
    assert (
        judge(control, treatment, HALF, alpha=math.nextafter(t.p_two_sided, 1)).verdict
        is Verdict.TREATMENT_WINS
    )


def test_control_wins_when_the_treatment_is_worse():
    j = judge(*arms(200_000, 10_300, 200_000, 10_000), HALF)
    assert j.verdict is Verdict.CONTROL_WINS
    assert j.ztest is not None and j.ztest.z == pytest.approx(-2.161140155, abs=1e-8)
    assert j.ztest.p_one_sided > 0.5  # one-sided "treatment better" is blind to harm (§1)


@pytest.mark.parametrize(("x_c", "x_t"), [(0, 0), (200_000, 200_000)])
def test_no_variance_is_insufficient_data_not_a_division(x_c, x_t):
    control, treatment = arms(200_000, x_c, 200_000, x_t)
    assert two_proportion_ztest(control, treatment) is None
    j = judge(control, treatment, HALF, min_conversions=0)
    assert j.verdict is Verdict.INSUFFICIENT_DATA
    assert "no variance" in j.reason
    json.dumps(j.to_dict(), allow_nan=False)
    assert "not computable" in j.render()


def test_no_exposures_at_all():
    j = judge(*arms(0, 0, 0, 0), HALF)
    assert j.verdict is Verdict.INSUFFICIENT_DATA
    assert j.ztest is None and j.srm.p == 1.0
    assert j.control.rate is None and j.relative_lift is None


def test_mde_at_the_floor_matches_section_6():
    # 200,000 per arm at 5 %: sigma_diff = 0.000689202, MDE = 0.193 pp = 3.86 % relative at 80 % power.
    t = two_proportion_ztest(*arms(200_000, 10_000, 200_000, 10_000))
    assert t is not None
    assert t.se_pooled == pytest.approx(0.000689202, rel=1e-6)
    assert t.mde == pytest.approx(0.000689202 * (1.959964 + 0.841621), rel=1e-6)
    assert round(t.mde * 100, 3) == 0.193
    assert round(t.mde / 0.05 * 100, 2) == 3.86


@pytest.mark.parametrize(
    ("n_c", "x_c"), [(-1, 0), (10, -1), (10, 11)], ids=["neg-exposures", "neg-conv", "conv>exp"]
)
def test_impossible_counts_are_refused(n_c, x_c):
    with pytest.raises(ValueError):
        Arm("control", n_c, x_c)


def test_same_variant_twice_is_refused():
    with pytest.raises(ValueError):
        judge(Arm("a", 10, 1), Arm("a", 10, 1), {"a": 1})


# -- §5.1: SRM -----------------------------------------------------------------------------------

SRM_VECTORS = [
    (
        {"control": 100_000, "treatment": 101_500},
        {"control": 50, "treatment": 50},
        11.16625310,
        0.0008329868712,
        True,
    ),
    (
        {"control": 50_000, "treatment": 51_000},
        {"control": 50, "treatment": 50},
        9.900990099,
        0.001651898732,
        False,
    ),
    (
        {"control": 100_000, "treatment": 100_400},
        {"control": 50, "treatment": 50},
        0.7984031936,
        0.3715712176,
        False,
    ),
    (
        {"control": 90_000, "treatment": 10_250},
        {"control": 90, "treatment": 10},
        5.610972569,
        0.01784835403,
        False,
    ),
    (
        {"a": 166_080, "b": 171_180, "c": 166_300},
        {"a": 1, "b": 1, "c": 1},
        99.04043212,
        3.116329865e-22,
        True,
    ),
]


@pytest.mark.parametrize(("observed", "weights", "chi2", "p", "srm"), SRM_VECTORS)
def test_srm_vectors(observed, weights, chi2, p, srm):
    check = srm_check(observed, weights)
    assert check.chi2 == pytest.approx(chi2, rel=1e-9)
    assert check.df == len(observed) - 1
    assert check.p == pytest.approx(p, rel=1e-7)
    assert (check.p < 0.001) is srm


def test_srm_critical_value():
    assert chi2_sf(10.82756617, 1) == pytest.approx(0.001, rel=1e-7)


@pytest.mark.parametrize(
    ("x", "df"), [(9.487729037, 4), (11.07049769, 5), (18.30703805, 10), (3.841458821, 1)]
)
def test_chi2_sf_at_textbook_5_percent_critical_values(x, df):
    assert chi2_sf(x, df) == pytest.approx(0.05, rel=1e-7)


def test_srm_blocks_a_significant_result():
    # Row 1 of the SRM table with a treatment that "wins" by a mile: still blocked (§5.1).
    control, treatment = Arm("control", 100_000, 10_000), Arm("treatment", 101_500, 10_800)
    j = judge(control, treatment, HALF)
    assert j.ztest is not None and j.ztest.p_two_sided < 0.001
    assert j.verdict is Verdict.BLOCKED_SRM
    assert j.srm.p == pytest.approx(0.0008329868712, rel=1e-7)
    assert "sample ratio mismatch" in j.reason


def test_srm_outranks_insufficient_data():
    j = judge(Arm("control", 100_000, 5), Arm("treatment", 101_500, 5), HALF)
    assert j.verdict is Verdict.BLOCKED_SRM


def test_srm_yellow_zone_does_not_block():
    # Row 2 (p = 0.00165): Statsig would show yellow, the gate goes on.
    j = judge(Arm("control", 50_000, 10_000), Arm("treatment", 51_000, 10_200), HALF)
    assert j.verdict is Verdict.NO_DIFFERENCE


def test_srm_with_an_uneven_split():
    j = judge(
        Arm("control", 90_000, 10_000),
        Arm("treatment", 10_250, 1_000),
        {"control": 90, "treatment": 10},
    )
    assert j.srm.p == pytest.approx(0.01784835403, rel=1e-7)
    assert j.verdict is not Verdict.BLOCKED_SRM


def test_exposures_of_a_variant_the_split_never_assigns_block():
    j = judge(*arms(200_000, 10_000, 200_000, 10_600), HALF, other_exposures={"holdout": 1})
    assert j.verdict is Verdict.BLOCKED_SRM
    assert j.srm.p == 0.0 and math.isinf(j.srm.chi2)
    assert json.dumps(j.to_dict(), allow_nan=False)  # inf is written as null


def test_a_zero_weight_variant_without_exposures_is_left_out():
    check = srm_check({"control": 100_000, "treatment": 100_400}, {**HALF, "off": 0})
    assert check.df == 1
    assert check.p == pytest.approx(0.3715712176, rel=1e-7)


@pytest.mark.parametrize("weights", [{"a": -1, "b": 2}, {"a": 0, "b": 0}])
def test_bad_weights_are_refused(weights):
    with pytest.raises(ValueError):
        srm_check({"a": 1, "b": 1}, weights)


# -- §4: sequential (mSPRT) ----------------------------------------------------------------------

N = 400_000  # vectors A and D: both arms


@pytest.mark.parametrize(
    ("tune_n", "multiplier"),
    [(5_000, 3.530736), (400_000, 3.035209), (10_000, 3.433940547)],
)
def test_sequential_multipliers(tune_n, multiplier):
    digits = len(str(multiplier).split(".")[1])
    assert round(msprt_multiplier(N, tune_n), digits) == multiplier


def test_multiplier_agrees_with_eppos_formula():
    # Notes §4.5: Eppo's B with N_tune = 10,000 equals GrowthBook's multiplier with N* = 10,000.
    # Eppo's formula is written out here independently of the implementation.
    c, t = 0.95, N
    rho = 10_000 / (math.log(math.log(math.e / (1 - c) ** 2)) - 2 * math.log(1 - c))
    b = (1 / math.sqrt(t)) * math.sqrt((t + rho) * math.log((t + rho) / (rho * (1 - c) ** 2)))
    assert msprt_multiplier(N, 10_000) == pytest.approx(b, rel=1e-12)


@pytest.mark.parametrize(
    ("x_t", "tune_n", "p"),
    [
        (10_300, 5_000, 1.0),
        (10_600, 5_000, 0.002553487),
        (10_300, 400_000, 0.3757305),
        (10_600, 400_000, 0.0008364507),
    ],
    ids=["A-5k", "D-5k", "A-400k", "D-400k"],
)
def test_sequential_vectors(x_t, tune_n, p):
    j = judge(*arms(200_000, 10_000, 200_000, x_t), HALF, sequential=True, tune_n=tune_n)
    assert j.sequential is not None and j.mode == "sequential"
    assert j.sequential.p == pytest.approx(p, rel=1e-6)
    assert j.p_value == j.sequential.p


@pytest.mark.parametrize("tune_n", [5_000, 400_000])
def test_vector_a_passes_fixed_but_fails_sequential(tune_n):
    control, treatment = arms(200_000, 10_000, 200_000, 10_300)
    assert judge(control, treatment, HALF).verdict is Verdict.TREATMENT_WINS
    j = judge(control, treatment, HALF, sequential=True, tune_n=tune_n)
    assert j.verdict is Verdict.NO_DIFFERENCE
    assert "always-valid p" in j.reason


def test_vector_d_wins_sequentially():
    j = judge(*arms(200_000, 10_000, 200_000, 10_600), HALF, sequential=True)
    assert j.verdict is Verdict.TREATMENT_WINS
    s = j.sequential
    assert s is not None and s.ci_low > 0
    # The confidence sequence is the fixed CI widened from 1.96 to the multiplier.
    assert j.ztest is not None
    assert (s.ci_high - s.ci_low) / (j.ztest.ci_high - j.ztest.ci_low) == pytest.approx(
        3.035209 / 1.959964, rel=1e-6
    )


@pytest.mark.parametrize("n", [2_000, 40_000, 400_000, 4_000_000])
def test_rejects_exactly_when_lambda_reaches_one_over_alpha(n):
    # Notes §4.3: reject when Λ ≥ 1/alpha; the multiplier is that boundary in |z|.
    m = msprt_multiplier(n)
    assert msprt_e_value(m, n) == pytest.approx(1 / 0.05, rel=1e-9)
    assert 1 / msprt_e_value(m * (1 + 1e-6), n) < 0.05 < 1 / msprt_e_value(m * (1 - 1e-6), n)
    assert m > 1.959964  # always wider than the fixed-horizon cut-off


def test_sequential_p_is_never_below_the_fixed_p():
    for n in (1_000, 50_000, 400_000, 10_000_000):
        for z in (0.0, 0.5, 1.0, 1.96, 2.5, 3.0, 4.0, 6.0, 10.0):
            seq = min(1.0, 1 / msprt_e_value(z, n))
            assert seq >= math.erfc(z / math.sqrt(2))


def test_always_valid_p_is_the_running_minimum():
    # pₙ = min(pₙ₋₁, 1/Λₙ), p₀ = 1 (notes §4.3): non-increasing, even when z falls back.
    looks = [(0.0, 10_000), (3.5, 100_000), (1.0, 200_000), (0.0, 400_000), (2.0, 800_000)]
    ps = always_valid_p(looks)
    assert ps[0] == 1.0  # 1/Λ > 1 at z = 0 is capped
    assert all(b <= a for a, b in itertools.pairwise(ps))
    assert ps[2] == ps[1] == min(1.0, 1 / msprt_e_value(3.5, 100_000))
    assert ps[1] < 0.05 and ps[-1] < 0.05  # once significant, it stays so


def _peeking_rejection_rates(sims: int, looks: int, batch: int, seed: int) -> tuple[float, float]:
    """Under H₀, how often fixed 1.96 and the mSPRT reject at some look (z as a random walk)."""
    rng = random.Random(seed)
    fixed = sequential = 0
    for _ in range(sims):
        s = 0.0
        hit_fixed = hit_seq = False
        for k in range(1, looks + 1):
            s += rng.gauss(0.0, 1.0)
            z = s / math.sqrt(k)
            hit_fixed = hit_fixed or abs(z) > 1.959964
            hit_seq = hit_seq or msprt_e_value(z, k * batch) >= 1 / 0.05
        fixed += hit_fixed
        sequential += hit_seq
    return fixed / sims, sequential / sims


def test_peeking_inflates_the_fixed_p_but_not_the_always_valid_one():
    # Notes §3: five looks at the 1.96 cut-off give about 14 % false positives.
    fixed, seq = _peeking_rejection_rates(sims=20_000, looks=5, batch=80_000, seed=6)
    assert fixed == pytest.approx(0.142, abs=0.01)
    assert seq <= 0.05
    # Daily looks for a quarter: the fixed cut-off gets worse, the mSPRT stays below alpha.
    fixed, seq = _peeking_rejection_rates(sims=2_000, looks=90, batch=5_000, seed=7)
    assert fixed > 0.25
    assert seq <= 0.05


# -- output --------------------------------------------------------------------------------------


def test_dict_and_render_carry_the_numbers():
    j = judge(*arms(200_000, 10_000, 200_000, 10_300), HALF, sequential=True)
    d = json.loads(json.dumps(j.to_dict(), allow_nan=False))
    assert d["verdict"] == "no-difference" and d["mode"] == "sequential"
    assert d["variants"]["control"] == {
        "role": "control",
        "exposures": 200_000,
        "conversions": 10_000,
        "rate": 0.05,
    }
    assert d["z"] == pytest.approx(2.161140155, abs=1e-8)
    assert d["p_fixed_two_sided"] == pytest.approx(0.03068451453, rel=1e-7)
    assert d["p"] == pytest.approx(0.3757305, rel=1e-6)
    assert d["relative_lift"] == pytest.approx(0.03)
    assert d["srm"]["p"] == 1.0 and d["srm"]["threshold"] == 0.001
    text = j.render("payments.dynamic-currency.enabled")
    assert text.startswith("payments.dynamic-currency.enabled: NO-DIFFERENCE")
    for fragment in (
        "5.000%",
        "5.150%",
        "+0.150 pp",
        "+3.00% relative",
        "z = 2.1611",
        "p = 0.3757",
        "N* = 400,000",
    ):
        assert fragment in text


def test_fixed_mode_warns_about_peeking():
    j = judge(*arms(200_000, 10_000, 200_000, 10_300), HALF)
    assert any("peeking" in n or "looking repeatedly" in n for n in j.notes)
    assert "note: fixed-horizon" in j.render()
