"""Pure statistics for evaluation curves and tables: mean@k, intervals, paired differences, running max,
sample efficiency, continual-learning matrices and ScaleRL sigmoid fits.

Foundation layer (docs/architecture.md): numpy only at import, scipy inside the functions that need it, no torch
and no agent, so any layer may use these and curves can be analysed without the training extras.
:mod:`fst_env.metrics` re-exports every name here, so ``from fst_env.metrics import X`` keeps working.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = [
    "ContinualMetrics", "PairedDifference", "RunningMax", "SigmoidFit", "accuracy_with_interval",
    "continual_metrics", "fit_sigmoid", "mean_at_k", "paired_difference", "running_max", "sample_efficiency_ratio",
    "samples_to_reach", "wilson_interval",
]


# ------------------------------------------------------------------------------------------ accuracy curves
def mean_at_k(values: Sequence[Sequence[float]] | np.ndarray) -> float:
    """mean@k: the mean over problems of each problem's mean over its k samples.

    ``values`` is a ``problems x k`` array of rewards or correctness (bools count as 0/1). Every problem has
    the same k, so this equals the mean of all entries; NaN (a sample that was not scored) is a caller bug and
    raises ValueError, as do an empty or non-2-D array.
    """
    array = np.asarray(values, dtype=float)
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"mean_at_k: need a non-empty problems x k array, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError("mean_at_k: values must be finite (every sample scored)")
    return float(array.mean(axis=1).mean())


def wilson_interval(successes: float, n: float, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval for a proportion ``successes / n`` (Wilson 1927), as ``(low, high)``.

    ``successes`` may be fractional (a sum of per-problem mean@k scores, see :func:`accuracy_with_interval`);
    it must lie in ``[0, n]`` and ``n`` must be > 0. Unlike the normal ("Wald") interval it stays inside
    [0, 1] and is not degenerate at 0/n or n/n: for 0/10 at 95% it is (0, 0.2775).
    """
    from scipy.stats import norm

    if not (n > 0 and math.isfinite(n)):
        raise ValueError(f"wilson_interval: n must be a finite number > 0, got {n}")
    if not (0 <= successes <= n):
        raise ValueError(f"wilson_interval: successes must be in [0, n={n}], got {successes}")
    if not 0 < confidence < 1:
        raise ValueError(f"wilson_interval: confidence must be in (0, 1), got {confidence}")
    z = float(norm.ppf(0.5 + confidence / 2))
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    # Clamp float rounding at the ends (0/n must give exactly 0 as its lower bound).
    return max(0.0, centre - half), min(1.0, centre + half)


def accuracy_with_interval(correct: Sequence[Sequence[float]] | np.ndarray,
                           confidence: float = 0.95) -> dict[str, Any]:
    """mean@k accuracy of a ``problems x k`` 0/1 array, with a Wilson interval over the ``n`` problems.

    The unit of the interval is the problem, not the sample: the ``k`` samples of one problem are correlated,
    so treating ``n x k`` samples as independent trials would make the interval too narrow. The interval is
    Wilson's with ``n`` = number of problems and ``successes`` = the sum of per-problem mean@k (for ``k = 1``
    the textbook Wilson interval). Returns ``accuracy``, ``ci_low``, ``ci_high``, ``n`` (problems), ``k`` and
    ``per_problem`` (each problem's mean over its k samples, in problem order, for paired comparisons).
    """
    array = np.asarray(correct, dtype=float)
    accuracy = mean_at_k(array)  # validates shape and finiteness
    if ((array < 0) | (array > 1)).any():
        raise ValueError("accuracy_with_interval: entries must be correctness values in [0, 1]")
    per_problem = array.mean(axis=1)
    n = int(array.shape[0])
    low, high = wilson_interval(float(per_problem.sum()), n, confidence)
    return {"accuracy": accuracy, "ci_low": low, "ci_high": high, "n": n, "k": int(array.shape[1]),
            "per_problem": [float(v) for v in per_problem]}


@dataclass(frozen=True)
class PairedDifference:
    """Mean of ``a - b`` over the same problems, with a confidence interval (see :func:`paired_difference`)."""

    mean: float
    ci_low: float
    ci_high: float
    n: int
    method: str
    confidence: float

    def as_dict(self) -> dict[str, float | int | str]:
        """The fields, for logging."""
        return asdict(self)


def paired_difference(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, *,
                      confidence: float = 0.95, method: str = "t", resamples: int = 10_000,
                      seed: int = 0) -> PairedDifference:
    """How much arm ``a`` beats arm ``b`` on the same problems: the mean paired difference and its interval.

    ``a[i]`` and ``b[i]`` are the two arms' scores on problem ``i`` (e.g. ``per_problem`` of
    :func:`accuracy_with_interval`; evaluated with common random numbers, see :meth:`FSTAgent.evaluate`). Pairing
    removes the between-problem variance that two separate intervals would both carry. ``method="t"``: Student's
    t interval on the ``n`` differences (``n - 1`` degrees of freedom; a zero-width interval when all differences
    are equal); ``method="bootstrap"``: percentile interval of ``resamples`` paired bootstrap means (problems
    resampled with replacement, rng ``seed``). Needs ``n >= 2`` and finite scores of equal length.
    """
    from scipy.stats import t as student_t

    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.ndim != 1 or x.shape != y.shape or x.size < 2:
        raise ValueError(f"paired_difference: a and b must be 1-D, of equal length >= 2, got {x.shape} and {y.shape}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("paired_difference: scores must be finite")
    if not 0 < confidence < 1:
        raise ValueError(f"paired_difference: confidence must be in (0, 1), got {confidence}")
    d = x - y
    n = int(d.size)
    mean = float(d.mean())
    if method == "t":
        se = float(d.std(ddof=1)) / math.sqrt(n)
        half = float(student_t.ppf(0.5 + confidence / 2, n - 1)) * se
        low, high = mean - half, mean + half
    elif method == "bootstrap":
        if resamples < 100:
            raise ValueError(f"paired_difference: resamples must be >= 100, got {resamples}")
        rng = np.random.default_rng(seed)
        means = d[rng.integers(0, n, size=(resamples, n))].mean(axis=1)
        low, high = (float(v) for v in np.quantile(means, [0.5 - confidence / 2, 0.5 + confidence / 2]))
    else:
        raise ValueError(f"paired_difference: method must be 't' or 'bootstrap', got {method!r}")
    return PairedDifference(mean=mean, ci_low=float(low), ci_high=float(high), n=n, method=method,
                            confidence=confidence)


def running_max(values: Sequence[float] | np.ndarray) -> np.ndarray:
    """The running maximum of a curve, ignoring NaN (a point not evaluated); NaN until the first real value."""
    return np.fmax.accumulate(np.asarray(values, dtype=float)) if len(values) else np.zeros(0)


class RunningMax:
    """Running maximum of a metric, fed one value at a time (the paper's validation curves plot it for mean@4).

    ``update(value, step)`` returns the maximum so far; NaN values (not evaluated) are ignored. ``value`` is
    NaN and ``step`` None until the first real value; ``step`` is where the maximum was first reached.
    """

    def __init__(self) -> None:
        self.value: float = math.nan
        self.step: int | None = None
        self.count = 0

    def update(self, value: float, step: int | None = None) -> float:
        """Fold in ``value`` (seen at ``step``, default: the number of updates so far); returns the maximum."""
        value = float(value)
        if math.isinf(value):
            raise ValueError(f"RunningMax.update: value must be finite or NaN, got {value}")
        at = self.count if step is None else step
        self.count += 1
        # Strictly greater: the step of a tie stays the earliest one, the point where the peak was first reached.
        if not math.isnan(value) and (math.isnan(self.value) or value > self.value):
            self.value, self.step = value, at
        return self.value


def samples_to_reach(samples: Sequence[float] | np.ndarray, values: Sequence[float] | np.ndarray,
                     target: float) -> float:
    """The first sample count at which a curve reaches ``target`` (``values >= target``); NaN if it never does.

    Curves are read at their evaluation points, without interpolation; NaN values are skipped.
    """
    samples_arr, values_arr = _curve(samples, values, "samples_to_reach")
    hits = np.flatnonzero(values_arr >= target)
    return float(samples_arr[hits[0]]) if hits.size else math.nan


def sample_efficiency_ratio(baseline_samples: Sequence[float] | np.ndarray,
                            baseline_values: Sequence[float] | np.ndarray,
                            method_samples: Sequence[float] | np.ndarray,
                            method_values: Sequence[float] | np.ndarray) -> float:
    """How many times fewer samples a method needs to match the baseline's peak (the paper's "3x" figure).

    ``S_base / S_method``, where ``S_base`` is the sample count at which the baseline first reaches its own
    peak and ``S_method`` the count at which the method first reaches that peak. NaN when the method never
    reaches it; ``inf`` when it starts at or above it (``S_method == 0``).
    """
    base_s, base_v = _curve(baseline_samples, baseline_values, "sample_efficiency_ratio")
    peak = float(np.nanmax(base_v)) if np.isfinite(base_v).any() else math.nan
    if math.isnan(peak):
        raise ValueError("sample_efficiency_ratio: the baseline curve has no finite value")
    needed_base = samples_to_reach(base_s, base_v, peak)
    needed_method = samples_to_reach(method_samples, method_values, peak)
    if math.isnan(needed_method):
        return math.nan
    return math.inf if needed_method == 0 else needed_base / needed_method


def _curve(samples: Sequence[float] | np.ndarray, values: Sequence[float] | np.ndarray,
           where: str) -> tuple[np.ndarray, np.ndarray]:
    s, v = np.asarray(samples, dtype=float), np.asarray(values, dtype=float)
    if s.ndim != 1 or s.shape != v.shape or s.size == 0:
        raise ValueError(f"{where}: samples and values must be 1-D, non-empty and of equal length, "
                         f"got {s.shape} and {v.shape}")
    if np.any(np.diff(s) < 0):
        raise ValueError(f"{where}: samples must be non-decreasing (a curve in training order)")
    return s, v


# ------------------------------------------------------------------------------------------ continual learning
@dataclass(frozen=True)
class ContinualMetrics:
    """Summary of a continual-learning accuracy matrix (see :func:`continual_metrics` for the formulas).

    Scalars are NaN when no term is defined; ``*_per_task`` arrays hold each task's term (NaN where it is
    undefined or does not apply), and ``n_*`` count the terms each average is over.
    """

    average_accuracy: float
    forgetting: float
    backward_transfer: float
    forward_transfer: float
    n_average_accuracy: int
    n_forgetting: int
    n_backward_transfer: int
    n_forward_transfer: int
    forgetting_per_task: np.ndarray
    backward_transfer_per_task: np.ndarray
    forward_transfer_per_task: np.ndarray

    def as_dict(self) -> dict[str, float]:
        """The scalar fields (for logging)."""
        return {k: float(v) for k, v in asdict(self).items() if not isinstance(v, np.ndarray)}


def continual_metrics(accuracy: Sequence[Sequence[float]] | np.ndarray,
                      baseline: Sequence[float] | np.ndarray | None = None) -> ContinualMetrics:
    """Average accuracy, forgetting, backward and forward transfer of a ``T x T`` accuracy matrix.

    ``accuracy[i, j]`` (``R[i, j]``) is the accuracy on task ``j`` after training stage ``i`` (task ``i`` is
    trained in stage ``i``); ``baseline[j]`` (``b_j``) is the initial model's accuracy on task ``j``.
    With ``T`` tasks (0-indexed):

    - average accuracy ``ACC = mean_j R[T-1, j]`` (Lopez-Paz & Ranzato 2017);
    - forgetting ``F = mean_{j < T-1} ( max_{l < T-1} R[l, j] - R[T-1, j] )`` (Chaudhry et al. 2018: the
      best accuracy any earlier stage had on task ``j`` minus the final one; >= 0 up to noise);
    - backward transfer ``BWT = mean_{j < T-1} ( R[T-1, j] - R[j, j] )`` (negative = forgetting);
    - forward transfer ``FWT = mean_{j > 0} ( R[j-1, j] - b_j )`` (needs ``baseline``; NaN without it).

    NaN marks an entry that was not evaluated. A term that needs a NaN entry is left out of its average (for
    forgetting, the max runs over the earlier stages that were evaluated); an average with no terms left is
    NaN. ``inf`` or a non-square matrix raises ValueError.
    """
    r = np.asarray(accuracy, dtype=float)
    if r.ndim != 2 or r.shape[0] != r.shape[1] or r.shape[0] == 0:
        raise ValueError(f"continual_metrics: accuracy must be a non-empty square T x T matrix (stage x task), "
                         f"got shape {r.shape}")
    if np.isinf(r).any():
        raise ValueError("continual_metrics: accuracy entries must be finite or NaN (not evaluated)")
    t = r.shape[0]
    b = None
    if baseline is not None:
        b = np.asarray(baseline, dtype=float)
        if b.shape != (t,):
            raise ValueError(f"continual_metrics: baseline must have one entry per task ({t}), got shape {b.shape}")
        if np.isinf(b).any():
            raise ValueError("continual_metrics: baseline entries must be finite or NaN")

    final = r[t - 1]
    forgetting = np.full(t, np.nan)
    backward = np.full(t, np.nan)
    forward = np.full(t, np.nan)
    for j in range(t - 1):
        earlier = r[:t - 1, j]
        if not np.isnan(final[j]) and not np.isnan(earlier).all():
            forgetting[j] = np.nanmax(earlier) - final[j]
        backward[j] = final[j] - r[j, j]  # NaN propagates when either entry is missing
    if b is not None:
        for j in range(1, t):
            forward[j] = r[j - 1, j] - b[j]

    def mean(values: np.ndarray) -> tuple[float, int]:
        defined = values[~np.isnan(values)]
        return (float(defined.mean()), int(defined.size)) if defined.size else (math.nan, 0)

    acc, n_acc = mean(final)
    f, n_f = mean(forgetting)
    bwt, n_bwt = mean(backward)
    fwt, n_fwt = mean(forward)
    return ContinualMetrics(acc, f, bwt, fwt, n_acc, n_f, n_bwt, n_fwt, forgetting, backward, forward)


# ------------------------------------------------------------------------------------------ sigmoid fits
@dataclass(frozen=True)
class SigmoidFit:
    """A fitted ScaleRL-style saturating curve ``R(C) = R0 + (A - R0) / (1 + (C_mid / C)^B)``.

    ``A`` is the asymptote, ``B`` the steepness, ``C_mid`` the compute (samples) at which half of the gain
    ``A - R0`` is reached, ``R0`` the value at ``C = 0`` (fixed when given to :func:`fit_sigmoid`), ``r2`` the
    coefficient of determination on the fitted points, ``n_points`` their number.
    """

    A: float
    B: float
    C_mid: float
    R0: float
    r2: float
    n_points: int
    r0_fixed: bool

    def predict(self, samples: float | Sequence[float] | np.ndarray) -> float | np.ndarray:
        """The curve at ``samples`` (a float for a scalar, else an array); ``C = 0`` gives ``R0``."""
        values = _sigmoid(np.asarray(samples, dtype=float), self.A, self.B, self.C_mid, self.R0)
        return float(values) if np.ndim(values) == 0 else values


def _sigmoid(c: np.ndarray, a: float, b: float, c_mid: float, r0: float) -> np.ndarray:
    # 1 / (1 + (C_mid / C)^B) = logistic(B (ln C - ln C_mid)), written with tanh: no overflow for any C or B,
    # and ln 0 = -inf gives exactly 0 gain at C = 0.
    with np.errstate(divide="ignore"):
        z = b * (np.log(c) - math.log(c_mid))
    return r0 + (a - r0) * 0.5 * (1.0 + np.tanh(0.5 * z))


def fit_sigmoid(samples: Sequence[float] | np.ndarray, accuracy: Sequence[float] | np.ndarray,
                r0: float | None = None) -> SigmoidFit:
    """Fit ``R - R0 = (A - R0) / (1 + (C_mid / C)^B)`` to an accuracy curve by least squares (scipy curve_fit).

    ``samples`` (C, e.g. training samples or steps) must be >= 0; ``accuracy`` fractions in [0, 1]. ``r0``
    fixes the starting value (ScaleRL fixes it to the initial model's accuracy); otherwise it is fitted too.
    Bounds: ``0 <= A <= 1``, ``B`` in [1e-3, 100], ``C_mid`` in [1e-3, 1e3] x the range of positive C,
    ``0 <= R0 <= 1``. Several starting points are tried and the lowest squared error kept, since a
    4-parameter sigmoid on a short, noisy curve has local minima. Fewer than 4 finite points, fewer than 2
    distinct positive C values, or values out of range raise ValueError.
    """
    from scipy.optimize import OptimizeWarning, curve_fit

    c = np.asarray(samples, dtype=float)
    y = np.asarray(accuracy, dtype=float)
    if c.ndim != 1 or c.shape != y.shape:
        raise ValueError(f"fit_sigmoid: samples and accuracy must be 1-D and of equal length, got {c.shape} and "
                         f"{y.shape}")
    keep = np.isfinite(c) & np.isfinite(y)
    c, y = c[keep], y[keep]
    if c.size < 4:
        raise ValueError(f"fit_sigmoid: need at least 4 finite points to fit a 4-parameter sigmoid, got {c.size}")
    if (c < 0).any():
        raise ValueError("fit_sigmoid: samples must be >= 0")
    if ((y < 0) | (y > 1)).any():
        raise ValueError("fit_sigmoid: accuracy must be fractions in [0, 1] (divide percentages by 100)")
    positive = np.unique(c[c > 0])
    if positive.size < 2:
        raise ValueError("fit_sigmoid: need at least 2 distinct positive sample counts to place the curve")
    if r0 is not None and not 0 <= r0 <= 1:
        raise ValueError(f"fit_sigmoid: r0 must be in [0, 1], got {r0}")

    c_low, c_high = float(positive[0]) * 1e-3, float(positive[-1]) * 1e3
    lower = [0.0, 1e-3, c_low]
    upper = [1.0, 100.0, c_high]
    if r0 is None:
        lower.append(0.0)
        upper.append(1.0)

        def model(cc: np.ndarray, a: float, b: float, c_mid: float, r: float) -> np.ndarray:
            return _sigmoid(cc, a, b, c_mid, r)
    else:
        def model(cc: np.ndarray, a: float, b: float, c_mid: float) -> np.ndarray:  # type: ignore[misc]
            return _sigmoid(cc, a, b, c_mid, r0)

    start_r0 = float(y[np.argmin(c)])
    best: tuple[float, np.ndarray] | None = None
    # Starting points: C_mid across the observed range (geometric), a few steepnesses, A at the best value seen.
    for c_mid0 in np.geomspace(positive[0], positive[-1], 5):
        for b0 in (0.5, 1.0, 3.0):
            p0 = [min(max(float(y.max()), 1e-6), 1.0), b0, float(c_mid0)] + ([start_r0] if r0 is None else [])
            try:
                with warnings.catch_warnings():
                    # Only the point estimate is used; an undetermined covariance (flat curve) is not an error.
                    warnings.simplefilter("ignore", OptimizeWarning)
                    params, _ = curve_fit(model, c, y, p0=p0, bounds=(lower, upper), maxfev=20000)
            except (RuntimeError, ValueError):
                continue  # this start did not converge; others will
            sse = float(np.sum((model(c, *params) - y) ** 2))
            if best is None or sse < best[0]:
                best = (sse, params)
    if best is None:
        raise ValueError("fit_sigmoid: the least-squares fit did not converge from any starting point")
    sse, params = best
    total = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - sse / total if total > 0 else (1.0 if sse == 0 else math.nan)
    a, b, c_mid = (float(v) for v in params[:3])
    return SigmoidFit(A=a, B=b, C_mid=c_mid, R0=float(params[3]) if r0 is None else float(r0), r2=r2,
                      n_points=int(c.size), r0_fixed=r0 is not None)

