"""fst_env.stats: mean@k, intervals, paired differences, running max, sample efficiency, continual-learning
matrices and sigmoid fits; and that fst_env.metrics still exports each of them."""

import math
import subprocess
import sys

import numpy as np
import pytest

import fst_env.metrics
import fst_env.stats
from fst_env.stats import (
    RunningMax,
    accuracy_with_interval,
    continual_metrics,
    fit_sigmoid,
    mean_at_k,
    paired_difference,
    running_max,
    sample_efficiency_ratio,
    samples_to_reach,
    wilson_interval,
)


# ------------------------------------------------------------------------------------------ mean@k, running max
def test_mean_at_k_hand_example_and_bad_input():
    assert mean_at_k([[1, 0, 1, 1], [0, 0, 0, 1]]) == pytest.approx(0.5)
    assert mean_at_k(np.array([[True, False], [True, True]])) == pytest.approx(0.75)
    assert mean_at_k([[0.25], [0.75], [0.5]]) == pytest.approx(0.5)
    for bad in ([1, 0, 1], [[]], [[1.0, math.nan]], np.zeros((0, 4))):
        with pytest.raises(ValueError):
            mean_at_k(bad)


def test_running_max_ignores_nan_and_keeps_first_step_of_peak():
    np.testing.assert_allclose(running_max([math.nan, 0.1, math.nan, 0.3, 0.2, 0.3]),
                               [math.nan, 0.1, 0.1, 0.3, 0.3, 0.3])
    tracker = RunningMax()
    assert math.isnan(tracker.value) and tracker.step is None
    seen = [tracker.update(v, step=s) for s, v in zip((0, 50, 100, 150, 200), (0.1, math.nan, 0.3, 0.2, 0.3),
                                                                       strict=True)]
    assert seen == [0.1, 0.1, 0.3, 0.3, 0.3]
    assert tracker.value == 0.3 and tracker.step == 100
    assert RunningMax().update(0.4) == 0.4
    with pytest.raises(ValueError):
        tracker.update(math.inf)


def test_samples_to_reach_and_sample_efficiency_ratio():
    base_samples, base_values = [0, 10, 20, 30, 40], [0.1, 0.2, 0.4, 0.42, 0.42]
    assert samples_to_reach(base_samples, base_values, 0.42) == 30
    assert samples_to_reach(base_samples, base_values, 0.5) != samples_to_reach(base_samples, base_values, 0.5)
    # The method reaches the baseline's peak 0.42 at 10 samples; the baseline itself at 30: 3x.
    assert sample_efficiency_ratio(base_samples, base_values, [0, 10, 20], [0.1, 0.45, 0.5]) == pytest.approx(3.0)
    assert math.isnan(sample_efficiency_ratio(base_samples, base_values, [0, 10], [0.1, 0.3]))
    assert sample_efficiency_ratio(base_samples, base_values, [0, 10], [0.5, 0.6]) == math.inf
    with pytest.raises(ValueError, match="non-decreasing"):
        samples_to_reach([0, 20, 10], [0.1, 0.2, 0.3], 0.2)
    with pytest.raises(ValueError, match="equal length"):
        samples_to_reach([0, 10], [0.1], 0.1)


# ------------------------------------------------------------------------------------------ continual learning
# R[i, j]: accuracy on task j after stage i. Task 1 is better *before* its own stage (0.75) than after it (0.7),
# so Chaudhry forgetting (max over all earlier stages) and -BWT (vs the diagonal) differ.
R = [[0.8, 0.75, 0.2],
     [0.6, 0.7, 0.3],
     [0.5, 0.5, 0.9]]
B = [0.1, 0.2, 0.25]


def test_continual_metrics_hand_computed():
    m = continual_metrics(R, B)
    assert m.average_accuracy == pytest.approx((0.5 + 0.5 + 0.9) / 3)
    # forgetting: task 0: max(0.8, 0.6) - 0.5 = 0.3; task 1: max(0.75, 0.7) - 0.5 = 0.25.
    assert m.forgetting == pytest.approx(0.275)
    # BWT: task 0: 0.5 - 0.8 = -0.3; task 1: 0.5 - 0.7 = -0.2.
    assert m.backward_transfer == pytest.approx(-0.25)
    # FWT: task 1: R[0,1] - b1 = 0.55; task 2: R[1,2] - b2 = 0.05.
    assert m.forward_transfer == pytest.approx(0.3)
    assert (m.n_average_accuracy, m.n_forgetting, m.n_backward_transfer, m.n_forward_transfer) == (3, 2, 2, 2)
    np.testing.assert_allclose(m.forgetting_per_task, [0.3, 0.25, math.nan])
    np.testing.assert_allclose(m.forward_transfer_per_task, [math.nan, 0.55, 0.05])
    assert set(m.as_dict()) == {"average_accuracy", "forgetting", "backward_transfer", "forward_transfer",
                                "n_average_accuracy", "n_forgetting", "n_backward_transfer", "n_forward_transfer"}


def test_continual_metrics_nan_entries_drop_only_their_terms():
    r = np.array(R, dtype=float)
    r[1, 0] = math.nan   # task 0 not evaluated after stage 1: forgetting's max runs over stage 0 only
    r[1, 2] = math.nan   # task 2 not evaluated before its stage: its FWT term is undefined
    m = continual_metrics(r, B)
    assert m.forgetting == pytest.approx((0.3 + 0.25) / 2)
    assert m.forward_transfer == pytest.approx(0.55) and m.n_forward_transfer == 1
    assert m.backward_transfer == pytest.approx(-0.25)

    r = np.array(R, dtype=float)
    r[2, 1] = math.nan   # final accuracy on task 1 missing: its ACC, forgetting and BWT terms go
    m = continual_metrics(r)
    assert m.average_accuracy == pytest.approx(0.7) and m.n_average_accuracy == 2
    assert m.forgetting == pytest.approx(0.3) and m.n_forgetting == 1
    assert m.backward_transfer == pytest.approx(-0.3) and m.n_backward_transfer == 1
    assert math.isnan(m.forward_transfer) and m.n_forward_transfer == 0  # no baseline given

    r = np.array(R, dtype=float)
    r[:, 0] = math.nan
    r[2, :] = math.nan
    m = continual_metrics(r, B)
    assert math.isnan(m.average_accuracy) and m.n_average_accuracy == 0
    assert math.isnan(m.forgetting) and math.isnan(m.backward_transfer)


def test_continual_metrics_single_task_and_bad_input():
    m = continual_metrics([[0.4]], [0.1])
    assert m.average_accuracy == pytest.approx(0.4)
    assert all(math.isnan(v) for v in (m.forgetting, m.backward_transfer, m.forward_transfer))
    for bad in ([[0.1, 0.2]], [], [[0.1, math.inf], [0.2, 0.3]], [0.1, 0.2]):
        with pytest.raises(ValueError):
            continual_metrics(bad)
    with pytest.raises(ValueError, match="baseline"):
        continual_metrics(R, [0.1, 0.2])


# ------------------------------------------------------------------------------------------ sigmoid fits
def curve(c: np.ndarray, a: float, b: float, c_mid: float, r0: float) -> np.ndarray:
    return r0 + (a - r0) / (1 + (c_mid / c) ** b)


TRUE = dict(a=0.6, b=1.5, c_mid=2000.0, r0=0.1)


def test_fit_sigmoid_recovers_noise_free_parameters():
    c = np.geomspace(100, 50000, 20)
    y = curve(c, **TRUE)
    for fit in (fit_sigmoid(c, y), fit_sigmoid(c, y, r0=0.1)):
        a, b, c_mid, r0 = fit.A, fit.B, fit.C_mid, fit.R0
        assert a == pytest.approx(0.6, abs=1e-4) and b == pytest.approx(1.5, rel=1e-3)
        assert c_mid == pytest.approx(2000.0, rel=1e-3) and r0 == pytest.approx(0.1, abs=1e-4)
        assert fit.r2 > 0.99999 and fit.n_points == 20
    assert fit_sigmoid(c, y, r0=0.1).r0_fixed and not fit_sigmoid(c, y).r0_fixed
    fit = fit_sigmoid(np.concatenate([[0.0], c]), np.concatenate([[0.1], y]))  # C = 0 is the start value
    assert fit.predict(0.0) == pytest.approx(0.1, abs=1e-4)
    assert isinstance(fit.predict(2000.0), float) and fit.predict(2000.0) == pytest.approx(0.35, abs=1e-3)
    np.testing.assert_allclose(fit.predict(c), y, atol=1e-4)
    assert fit.predict(1e12) == pytest.approx(0.6, abs=1e-3)  # extrapolates to the asymptote


def test_fit_sigmoid_recovers_parameters_from_noisy_data():
    rng = np.random.default_rng(0)
    c = np.geomspace(100, 50000, 30)
    y = np.clip(curve(c, **TRUE) + rng.normal(0, 0.01, c.size), 0, 1)
    fit = fit_sigmoid(c, y)
    a, b, c_mid = fit.A, fit.B, fit.C_mid
    assert a == pytest.approx(0.6, abs=0.03) and b == pytest.approx(1.5, rel=0.3)
    assert c_mid == pytest.approx(2000, rel=0.25) and fit.r2 > 0.98
    fixed = fit_sigmoid(c, y, r0=0.1)
    a_fixed, r0_fixed = fixed.A, fixed.R0
    assert a_fixed == pytest.approx(0.6, abs=0.02) and r0_fixed == 0.1


def test_fit_sigmoid_respects_bounds_and_rejects_bad_input():
    # A curve still climbing past 1 would want A > 1: the bound holds it at 1.
    c = np.array([10.0, 20, 40, 80, 160])
    fit = fit_sigmoid(c, np.array([0.1, 0.3, 0.6, 0.85, 0.99]))
    assert 0 <= fit.A <= 1 and fit.B > 0 and fit.C_mid > 0 and 0 <= fit.R0 <= 1
    with pytest.raises(ValueError, match="at least 4"):
        fit_sigmoid([10, 20, 30], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="at least 4"):
        fit_sigmoid([10, 20, 30, 40], [0.1, 0.2, math.nan, 0.3])
    with pytest.raises(ValueError, match="fractions"):
        fit_sigmoid([10, 20, 30, 40], [10, 20, 30, 40])
    with pytest.raises(ValueError, match="distinct"):
        fit_sigmoid([0, 0, 0, 5], [0.1, 0.1, 0.1, 0.2])
    with pytest.raises(ValueError, match=">= 0"):
        fit_sigmoid([-1, 20, 30, 40], [0.1, 0.2, 0.3, 0.3])
    with pytest.raises(ValueError, match="r0"):
        fit_sigmoid(c, np.array([0.1, 0.3, 0.6, 0.85, 0.99]), r0=1.5)


# ------------------------------------------------------------------------------------------ intervals
def test_wilson_interval_matches_known_values():
    # Reference values (z = 1.959964): 0/10 -> (0, 0.2775), 5/10 -> (0.2366, 0.7634), 10/10 -> (0.7225, 1).
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.27753), abs=1e-5)
    assert wilson_interval(5, 10) == pytest.approx((0.23659, 0.76341), abs=1e-5)
    assert wilson_interval(10, 10) == pytest.approx((0.72247, 1.0), abs=1e-5)
    low, high = wilson_interval(1, 1)
    assert 0 < low < 1 and high == 1.0
    for bad in ((11, 10), (-1, 10), (0, 0)):
        with pytest.raises(ValueError):
            wilson_interval(*bad)


def test_accuracy_with_interval_uses_problems_as_the_unit():
    correct = [[1, 1], [0, 0], [1, 0], [0, 0]]  # mean@2 = 0.375 over n = 4 problems
    result = accuracy_with_interval(correct)
    assert result["accuracy"] == 0.375 and result["n"] == 4 and result["k"] == 2
    assert result["per_problem"] == [1.0, 0.0, 0.5, 0.0]
    assert (result["ci_low"], result["ci_high"]) == pytest.approx(wilson_interval(1.5, 4))
    # Eight independent samples would give a narrower interval: problems, not samples, are the unit.
    wide = result["ci_high"] - result["ci_low"]
    narrow = np.subtract(*wilson_interval(3, 8)[::-1])
    assert wide > narrow
    with pytest.raises(ValueError):
        accuracy_with_interval([[2.0]])


def test_paired_difference_t_and_bootstrap_on_hand_counts():
    a = [1, 1, 1, 0, 1, 0, 1, 1]
    b = [0, 1, 0, 0, 1, 0, 0, 1]
    d = np.subtract(a, b)  # [1, 0, 1, 0, 0, 0, 1, 0]: mean 0.375, sd 0.5175, n 8
    t = paired_difference(a, b)
    half = 2.364624 * d.std(ddof=1) / math.sqrt(8)  # t_{0.975, 7}
    assert t.mean == 0.375 and t.n == 8
    assert (t.ci_low, t.ci_high) == pytest.approx((0.375 - half, 0.375 + half), abs=1e-6)
    boot = paired_difference(a, b, method="bootstrap", seed=1)
    assert boot.mean == 0.375 and 0.0 <= boot.ci_low < 0.375 < boot.ci_high <= 0.75
    same = paired_difference([0.5, 1.0, 0.0], [0.5, 1.0, 0.0])
    assert (same.mean, same.ci_low, same.ci_high) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError):
        paired_difference([1.0], [0.0])
    with pytest.raises(ValueError):
        paired_difference([1.0, 0.0], [0.0, 1.0], method="z")


# ------------------------------------------------------------------------------------------ the module itself
def test_metrics_re_exports_the_same_objects():
    for name in fst_env.stats.__all__:
        assert getattr(fst_env.metrics, name) is getattr(fst_env.stats, name), name
        assert name in fst_env.metrics.__all__, name
    assert fst_env.metrics._sigmoid is fst_env.stats._sigmoid


def test_importing_stats_imports_neither_torch_nor_scipy_nor_an_upper_layer():
    # Foundation layer: importable without the training extras; scipy loads only inside the functions using it.
    code = ("import sys, fst_env.stats; bad = [m for m in ('torch', 'scipy', 'fst_env.agents', 'fst_env.models', "
            "'fst_env.backends', 'fst_env.metrics') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
