"""Comparison of adapter observations with oracle expectations: the tolerance model.

One model for every framework, fixed a priori (never tuned to a framework's
results). For each element of each observable::

    tol = SAFETY * ( u_acc * sqrt(m) * magnitude  +  (u_store * |expected| + eta_store) * (i + 1) )

* ``magnitude`` — from the oracle: the same computation with absolute values
  (running error analysis, Higham 2002, ch. 3). It makes the tolerance follow
  the conditioning of the case: a channel with mean 1e4 and spread 1 gets the
  error a STABLE (two-pass / Welford) algorithm makes in the accumulation
  dtype, and nothing more — a one-pass ``E[x^2] - E[x]^2`` variance that
  cancels catastrophically fails.
* ``u_acc`` — unit roundoff of the accumulation dtype: float64 for float64
  cases, float32 otherwise (frameworks accumulate half-precision BN in float32;
  ``aten/src/ATen/native/cpu/batch_norm_kernel.cpp`` uses ``opmath_t``).
* ``sqrt(m)`` — growth of rounding error in a reduction over ``m`` values per
  channel (N x spatial): the probabilistic bound for recursive summation
  (Higham 2002, sec. 4.2). Pairwise/cascade summation does better.
* ``(u_store * |expected| + eta_store) * (i + 1)`` — rounding into the storage
  dtype of the observable, once per step that rewrote it (step index ``i``,
  0-based). ``eta_store`` is half the smallest subnormal of the storage dtype:
  the absolute error of rounding into the subnormal range (the model
  ``fl(x) = x (1 + d) + e``, ``|e| <= eta``, of Higham 2002, sec. 2.1; found by
  ``bnconform explore``: a float16 output ~3e-5 is subnormal, where a relative
  bound alone is too tight).
* An exact value beyond the storage dtype's largest finite value is stored as
  ``+-inf`` (IEEE 754 overflow): an infinity of the same sign matches it.
* ``SAFETY = 4`` — headroom for the handful of elementwise operations after the
  reductions (subtract, multiply by rsqrt, scale, shift).

Composite cases (``case.pre``: Conv -> BN, Linear -> BN) grow by
``sqrt(m) + sqrt(K) + FOLD_ROUNDINGS`` instead of ``sqrt(m)``, derived, not
fitted (:func:`growth`): the oracle's output magnitude already contains
``s |W| * |x|`` (``s = |gamma| / sqrt(var + eps)``, ``oracle.pre_forward``), and

* unfolded, the preceding layer's dot products of ``K = C_in prod(kernel)``
  terms err by ``u sqrt(K) |W| * |x|`` (same probabilistic model), which the
  BatchNorm scales by ``s``: ``<= u sqrt(K) magnitude``;
* folded (inference engines rewrite eval BN into the preceding layer:
  PyTorch ``torch/nn/utils/fusion.py`` ``fuse_conv_bn_weights``, onnxruntime
  ``onnxruntime/core/optimizer/conv_bn_fusion.cc``): ``W' = W * fl(gamma *
  rsqrt(var + eps))`` carries at most 4 roundings per weight (sqrt, divide or
  rsqrt counted as 2, times gamma, times W) and ``b' = (b - mean) * rsqrt *
  gamma + beta`` at most 5 on ``s (|b| + |mean|) + |beta|``; with the
  ``u sqrt(K)`` of the folded dot product the error is ``<= u (sqrt(K) + 5)
  magnitude``. ``FOLD_ROUNDINGS = 5`` is that count, so one tolerance covers
  the unfolded and the folded form of the same block (their errors add at
  most), and a fold that forgets eps, uses another variance or misplaces the
  mean (an error of relative size 1e-4 or more on these cases) still fails. Where the
expected value is NaN the framework must produce NaN; where it is finite the
framework must produce a finite value within tolerance.

Unit roundoffs: float64 2^-53, float32 2^-24, float16 2^-11, bfloat16 2^-8.

Precision profiles (oracle knobs ``variance_algorithm``, ``compute_dtype``,
``accumulation_dtype``, ``summation``, ``ema_form``) add the oracle's ``spread`` — the absolute envelope
of the documented algorithm, derived in :func:`bnconform.oracle.simulate` —
to this tolerance: ``tol + spread``. An element with an infinite spread is
UNBOUNDED (the algorithm may return anything there, NaN included): it is not
judged, and the comparison counts it in ``unbounded``. The canonical profile
has no spread, so canonical tolerances are exactly the formula above.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np

from .catalogue import Case, Forward, Backward, SgdStep
from .oracle import ACCUMULATION_DTYPE, SAFETY, UNIT_ROUNDOFF, Expectation

__all__ = ["ACCUMULATION_DTYPE", "SAFETY", "UNIT_ROUNDOFF", "ObservableComparison", "compare", "compare_one",
           "expectations_agree", "storage_dtype", "tolerance"]
EXACT = frozenset({"num_batches_tracked"})
#: Roundings a BN -> Conv/Linear fold adds per output (module docstring).
FOLD_ROUNDINGS = 5
#: Largest finite value of each storage dtype (IEEE 754 binary16/32/64; bfloat16 is
#: binary32's exponent with 8 significand bits: (2 - 2^-7) * 2^127). A value beyond
#: it overflows to +-inf when rounded to the storage dtype.
MAX_FINITE = {"float16": float(np.finfo(np.float16).max), "bfloat16": (2 - 2**-7) * 2.0**127,
              "float32": float(np.finfo(np.float32).max), "float64": float(np.finfo(np.float64).max)}
#: Half the smallest subnormal of each storage dtype: the absolute error of rounding into
#: the subnormal range (binary16 2^-24, bfloat16 2^-133, binary32 2^-149, binary64 2^-1074).
UNDERFLOW = {"float16": 2.0**-25, "bfloat16": 2.0**-134, "float32": 2.0**-150, "float64": 2.0**-1075}
#: Observables stored in the input dtype; the rest live in the parameter dtype.
ACTIVATIONS = frozenset({"output", "grad_input"})
#: Per-channel vectors at most this long are kept in results for plots.
KEEP_VALUES_UP_TO = 64


#: The message of a comparison where the framework has NaN and the oracle a value (followed by the count).
NAN_WHERE_VALUE = "NaN where the oracle has a value"


def storage_dtype(observable: str, case: Case) -> str:
    """Dtype an observable is stored in for this case (bfloat16 arrays travel as float32)."""
    if observable in ACTIVATIONS:
        return case.input.dtype
    return "float64" if case.input.dtype == "float64" else "float32"


def tolerance(expected: np.ndarray, magnitude: np.ndarray, observable: str, case: Case, step_index: int,
              spread: np.ndarray | None = None) -> np.ndarray:
    """Elementwise absolute tolerance for one observable (see module docstring).

    ``expected`` and ``magnitude`` are float64 of the same shape; ``spread``
    (optional, same shape, >= 0, may be ``inf``) is the oracle's precision
    envelope, added as is. Returns float64.
    """
    if observable in EXACT:
        return np.zeros_like(expected, dtype=np.float64)
    k_mag, u_store, eta_store, k_store = _tolerance_factors(observable, case, step_index)
    # In place: two temporaries instead of six (each a fresh, page-faulted array at 2^21 values).
    # The same operations, in the same order, as the blocked comparison (_Tolerance.fill).
    tol = np.abs(np.asarray(magnitude, dtype=np.float64))
    tol *= k_mag
    stored = np.abs(np.asarray(expected, dtype=np.float64))
    stored *= u_store
    stored += eta_store
    stored *= k_store
    tol = np.add(tol, stored, out=tol) if tol.shape == stored.shape else tol + stored
    return tol if spread is None else tol + spread


def _tolerance_factors(observable: str, case: Case, step_index: int) -> tuple[float, float, float, float]:
    """The constants of :func:`tolerance`: ``tol = |magnitude| k_mag + ((|expected| u_store + eta_store) k_store)``."""
    u_acc = UNIT_ROUNDOFF[ACCUMULATION_DTYPE[case.input.dtype]]
    store = storage_dtype(observable, case)
    return SAFETY * u_acc * growth(case), UNIT_ROUNDOFF[store], UNDERFLOW[store], SAFETY * (step_index + 1)


class _Tolerance:
    """:func:`tolerance` of one observable, computed block by block by the blocked
    comparison (:func:`_compare_finite`) instead of as a whole array: the same
    operations on the same float64 values in the same order, so every element is
    bit for bit what :func:`tolerance` returns (tests/test_compare_fast.py)."""

    def __init__(self, expected: np.ndarray, magnitude, observable: str, case: Case, step_index: int,
                 spread: np.ndarray | None = None):
        shape = np.shape(expected)
        flat = lambda v: np.ravel(np.broadcast_to(np.asarray(v, dtype=np.float64), shape))  # noqa: E731
        self.exact = observable in EXACT
        self.magnitude = flat(magnitude)
        self.spread = None if spread is None else flat(spread)
        self.factors = None if self.exact else _tolerance_factors(observable, case, step_index)

    def fill(self, start: int, stop: int, out: np.ndarray, abs_expected: np.ndarray, scratch: np.ndarray) -> None:
        """``out[:] =`` the tolerance of flat elements ``[start, stop)``; ``abs_expected`` is
        ``|expected|`` there (kept), ``scratch`` a buffer of the same length."""
        if self.exact:
            out.fill(0.0)
            return
        k_mag, u_store, eta_store, k_store = self.factors
        np.abs(self.magnitude[start:stop], out=out)
        out *= k_mag
        np.multiply(abs_expected, u_store, out=scratch)
        scratch += eta_store
        scratch *= k_store
        out += scratch
        if self.spread is not None:
            out += self.spread[start:stop]


def growth(case: Case) -> float:
    """Rounding-error growth of the case's reductions: ``sqrt(m)``, and for a
    composite case ``sqrt(m) + sqrt(K) + FOLD_ROUNDINGS`` (module docstring)."""
    g = math.sqrt(max(case.input.reduction_size, 1))
    if case.pre is not None:
        g += math.sqrt(case.pre_fan_in) + FOLD_ROUNDINGS
    return g


@dataclass
class ObservableComparison:
    """The comparison of one observable after one step.

    ``ratio`` is max(|actual - expected| / tol) over elements (<= 1 passes);
    ``headroom`` = 1 / ratio (how many times larger the error could have been).
    ``message`` explains a structural failure (missing, shape, dtype, NaN).
    ``expected``/``actual`` keep small per-channel vectors for the report's plots.
    ``unbounded``: elements the profile's algorithm does not bound (infinite
    spread), left unjudged.
    """

    step: int
    op: str
    observable: str
    passed: bool
    max_abs_err: float = 0.0
    max_rel_err: float = 0.0
    tol_at_worst: float = 0.0
    ratio: float = 0.0
    message: str | None = None
    expected: list | float | None = None
    actual: list | float | None = None
    unbounded: int = 0

    @property
    def headroom(self) -> float:
        return math.inf if self.ratio == 0 else 1.0 / self.ratio

    def to_dict(self) -> dict:
        # Field by field (dataclasses.asdict deep-copies the value lists: a third of a cell's harness time).
        d = {f: getattr(self, f) for f in _FIELDS}
        d["headroom"] = None if math.isinf(self.headroom) else self.headroom
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


_FIELDS = tuple(f.name for f in fields(ObservableComparison))


def _op_name(case: Case, i: int) -> str:
    s = case.steps[i]
    if isinstance(s, Forward):
        return f"forward({s.mode})"
    if isinstance(s, Backward):
        return "backward"
    assert isinstance(s, SgdStep)
    return f"sgd_step(lr={s.lr})"


def _small(a: np.ndarray):
    if a.ndim == 0:
        v = float(a)
        return v if math.isfinite(v) else None
    if a.size <= KEEP_VALUES_UP_TO:
        return [float(v) if math.isfinite(v) else None for v in a.ravel()]
    return None


def compare_one(actual, exp_value, magnitude, observable: str, case: Case, i: int,
                check_dtype: bool = True, spread: np.ndarray | None = None) -> ObservableComparison:
    """Compare one observable; never raises for bad ``actual`` (recorded as failed).

    ``spread``: the oracle's precision envelope (None for canonical); elements
    where it is infinite are not judged (any value, NaN included)."""
    op = _op_name(case, i)
    base = dict(step=i, op=op, observable=observable)
    if actual is None:
        return ObservableComparison(**base, passed=False, message="adapter returned no value")
    try:
        a = np.asarray(actual)
    except Exception as exc:  # noqa: BLE001 - plug-ins may return anything
        return ObservableComparison(**base, passed=False, message=f"not an array: {exc!r}")
    if a.shape != exp_value.shape:
        return ObservableComparison(**base, passed=False, message=f"shape {a.shape}, expected {exp_value.shape}")
    if check_dtype and observable not in EXACT:
        want = storage_dtype(observable, case)
        want_np = "float32" if want == "bfloat16" else want
        if a.dtype != np.dtype(want_np):
            return ObservableComparison(**base, passed=False, message=f"dtype {a.dtype}, expected {want_np} ({want})")
    elif not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        return ObservableComparison(**base, passed=False, message=f"dtype {a.dtype}, expected a number")
    e = exp_value
    small = dict(expected=_small(e), actual=_small(a)) if e.size <= KEEP_VALUES_UP_TO else {}
    if spread is None or not np.isinf(spread).any():
        fast = _compare_finite(a, e, _Tolerance(e, magnitude, observable, case, i, spread))
        if fast is not None:
            return ObservableComparison(**base, passed=bool(fast["ratio"] <= 1.0), **fast, **small)
    tol = tolerance(e, magnitude, observable, case, i, spread)
    a64 = a.astype(np.float64)
    if spread is not None:
        free = np.isinf(spread) & np.ones(e.shape, bool)
        unbounded = int(free.sum())
        if unbounded:
            base["unbounded"] = unbounded
            e, a64 = np.where(free, 0.0, e), np.where(free, 0.0, a64)
    if observable not in EXACT:
        # An exact value beyond the storage dtype's range is stored as +-inf (IEEE 754
        # overflow under round-to-nearest): an infinity of its sign is that value, stored.
        with np.errstate(invalid="ignore"):
            overflow = (np.isfinite(e) & (np.abs(e) > MAX_FINITE[storage_dtype(observable, case)])
                        & np.isinf(a64) & (np.sign(a64) == np.sign(e)))
        if overflow.any():
            e = np.where(overflow, a64, e)
    nan_e, nan_a = np.isnan(e), np.isnan(a64)
    if np.any(nan_e & ~nan_a) or np.any(~nan_e & nan_a):
        where = NAN_WHERE_VALUE if np.any(~nan_e & nan_a) else "a value where the oracle has NaN"
        return ObservableComparison(**base, passed=False, ratio=math.inf,
                                    message=f"{where} ({int(np.sum(nan_e != nan_a))} element(s))", **small)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        finite = ~nan_e
        err = np.where(finite, np.abs(a64 - e), 0.0)
        inf_e = np.isinf(e)
        err = np.where(inf_e, np.where(a64 == e, 0.0, np.inf), err)
        # An infinite error is infinitely out, also where the tolerance is infinite.
        ratio_el = np.where(err == 0, 0.0, np.where(np.isinf(err), np.inf, err / np.where(tol > 0, tol, 0.0)))
        rel = np.where(finite & (e != 0) & ~np.isinf(err), err / np.abs(e), np.where(err == 0, 0.0, np.inf))
    if err.size == 0:
        return ObservableComparison(**base, passed=True, **small)
    worst = int(np.argmax(ratio_el))
    ratio = float(ratio_el.ravel()[worst])
    return ObservableComparison(
        **base,
        passed=bool(ratio <= 1.0),
        max_abs_err=float(err.max()),
        max_rel_err=float(rel.max()),
        tol_at_worst=float(tol.ravel()[worst]),
        ratio=ratio,
        **small,
    )


#: Elements per block of the blocked comparison (:func:`_compare_finite`): 2^14 float64 =
#: 128 KiB per buffer, so a block's dozen passes stay in the core's cache instead of
#: streaming ~16 MB arrays through memory once per pass (benchmarks/RESULTS.md).
BLOCK = 1 << 14


def _compare_finite(a: np.ndarray, e: np.ndarray, tol, block: int = BLOCK) -> dict | None:
    """The comparison of ``a`` with ``e`` (same shape) when every value of both is
    finite: ``{max_abs_err, max_rel_err, tol_at_worst, ratio}``; None when some
    value is not finite (NaN, inf, or a difference that overflows), which the
    general path of :func:`compare_one` judges.

    ``tol``: the tolerance, an array broadcastable to ``e``, or a
    :class:`_Tolerance` that computes it block by block.

    Blocked: the elements are taken ``block`` at a time in C order through four
    scratch buffers (error, tolerance, |expected|, ratio), so the ~15 elementwise
    passes run in cache, and the whole-size tolerance, error and ratio arrays are
    never materialised. Exact, not approximate: every element's error, tolerance,
    ratio and relative error is the same float64 operation as in the unblocked
    formula, and maxima do not depend on blocking; the worst element is the FIRST
    maximum of the ratio in C order (``np.argmax`` on the whole array; a NaN ratio,
    from a NaN tolerance, wins as there). Same values as the general path: an
    element with zero error has ratio and relative error 0 (also where the
    tolerance or the expected value is 0); a nonzero error over a zero tolerance
    is an infinite ratio."""
    if e.size == 0:
        return dict(max_abs_err=0.0, max_rel_err=0.0, tol_at_worst=0.0, ratio=0.0)
    # Flat C-order views (0-d values included: ufuncs with out= need arrays); a copy only
    # where an array is not C-contiguous.
    if not isinstance(tol, _Tolerance):
        flat_tol = np.ravel(np.broadcast_to(tol, np.shape(e)))
    a, e = np.ravel(a), np.ravel(np.asarray(e, dtype=np.float64))
    n = e.size
    k = min(block, n)
    err_b, tol_b, abs_b, buf_b = (np.empty(k) for _ in range(4))
    max_abs, max_rel, ratio, worst_tol = 0.0, 0.0, None, 0.0
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        for start in range(0, n, block):
            stop = min(start + block, n)
            size = stop - start
            err, tol_blk, abs_e, buf = err_b[:size], tol_b[:size], abs_b[:size], buf_b[:size]
            np.subtract(a[start:stop], e[start:stop], out=err, dtype=np.float64)
            np.abs(err, out=err)
            # err >= 0 or NaN: its max is finite exactly when every element is (or it overflows:
            # the general path).
            top = float(err.max())
            if not math.isfinite(top):
                return None
            max_abs = max(max_abs, top)
            np.abs(e[start:stop], out=abs_e)
            if isinstance(tol, _Tolerance):
                tol.fill(start, stop, tol_blk, abs_e, buf)
            else:
                tol_blk = flat_tol[start:stop]
            np.divide(err, tol_blk, out=buf)
            if not float(tol_blk.min()) > 0.0:
                buf[err == 0] = 0.0   # 0 / 0 (or a NaN tolerance): no error is no failure
            j = int(np.argmax(buf))
            r = float(buf[j])
            if ratio is None or r > ratio or (math.isnan(r) and not math.isnan(ratio)):
                ratio, worst_tol = r, float(tol_blk[j])
            np.divide(err, abs_e, out=buf)   # 0 / 0 -> NaN, dropped by fmax: zero error is relative error 0
            rel = float(np.fmax.reduce(buf, axis=None))
            if rel > max_rel:
                max_rel = rel
    return dict(max_abs_err=max_abs, max_rel_err=max_rel, tol_at_worst=worst_tol, ratio=ratio)


def compare(expectation: Expectation, observations: dict, case: Case, observable_by_adapter: frozenset[str]) -> tuple[list[ObservableComparison], list[str]]:
    """Compare every observable the case observes and the adapter can observe.

    ``observations[(step_index, observable)]`` are the adapter's arrays.
    Returns ``(comparisons, not_observed)`` where ``not_observed`` lists the
    observables the case asks for but the adapter declares it cannot expose.
    """
    wanted = set(case.observe)
    results, not_observed = [], sorted(wanted - observable_by_adapter)
    for (i, name), exp in sorted(expectation.values.items()):
        if name not in wanted or name not in observable_by_adapter:
            continue
        results.append(compare_one(observations.get((i, name)), exp.value, exp.magnitude, name, case, i,
                                   spread=exp.spread))
    return results, not_observed


def _spread(e) -> np.ndarray:
    return np.zeros(np.shape(e.value)) if e.spread is None else np.asarray(e.spread, dtype=np.float64)


def expectations_agree(a: Expectation, b: Expectation, case: Case, observables: frozenset[str]) -> bool:
    """True when profile ``b`` is indistinguishable from profile ``a`` on this
    case (then a documented divergence taking ``a`` to ``b`` does not manifest
    here and the cell is judged against ``a``).

    Two conditions on every compared element (observed observables only):

    1. VALUES: ``b``'s value lies within ``a``'s tolerance (``a``'s spread
       included) — ``b``'s semantics cannot be told from ``a``'s at ``a``'s
       resolution. This is the rule for semantic knobs (e.g. the biased
       running variance).
    2. ENVELOPE: ``b``'s precision envelope (``Expected.spread``) is nowhere
       wider than ``a``'s. An implementation of ``b``'s algorithm may land
       anywhere within ``b``'s value +- (rounding tolerance + spread); were the
       cell judged against ``a`` with a narrower envelope, a legitimate
       implementation of ``b`` could fail it — and the verdict would flip with
       rounding (a cliff). So wherever ``b``'s algorithm is exercised with a
       wider envelope (one-pass variance on a batch-statistics forward, a
       narrower compute dtype), the divergence manifests. The comparison is
       on the spreads, the part of the tolerance the precision knobs add, not
       on the whole tolerance: a semantic knob's incidental effect on the
       magnitudes (eps rounded to float32 moves 1/sqrt(var + eps) in the 8th
       digit) is not a wider envelope. No threshold: any excess counts.
    """
    keys = {k for k in a.values.keys() | b.values.keys() if k[1] in observables and k[1] in case.observe}
    for key in keys:
        ea, eb = a.values.get(key), b.values.get(key)
        if ea is None or eb is None:
            return False
        if not compare_one(eb.value, ea.value, ea.magnitude, key[1], case, key[0], check_dtype=False,
                           spread=ea.spread).passed:
            return False
        if eb.spread is not None and np.any(_spread(eb) > _spread(ea)):
            return False
    return True
