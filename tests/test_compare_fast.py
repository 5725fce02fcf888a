"""The cost work of issue 21 changes no number: the comparison's blocked fast path
(``compare._compare_finite`` with ``compare._Tolerance``) and the oracle's in-place
arithmetic give exactly what the straightforward whole-array formulas give — on
random inputs, on adversarial ones (zeros, subnormals, huge offsets, ties, zero
tolerances, non-contiguous arrays) and on one 2^21-element array — and inputs the
fast path cannot judge (NaN, inf, an overflowing difference) leave it for the
general path.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from bnconform import oracle
from bnconform.compare import (ACCUMULATION_DTYPE, BLOCK, EXACT, SAFETY, UNDERFLOW, UNIT_ROUNDOFF, _compare_finite,
                               _Tolerance, compare_one, growth, storage_dtype, tolerance)
from bnconform.arrays import generate
from bnconform.oracle import CANONICAL, channel_view, reduce_axes, simulate

from .test_oracle import make_case

CASE = make_case([{"op": "forward", "mode": "train"}, {"op": "backward"}, {"op": "forward", "mode": "eval"}],
                 shape=(8, 2, 4, 4))
CASE32 = CASE.model_copy(update={"input": CASE.input.model_copy(update={"dtype": "float32"})})
CASE16 = CASE.model_copy(update={"input": CASE.input.model_copy(update={"dtype": "float16"})})


def reference(actual, expected, magnitude, observable, case, step, spread=None) -> dict:
    """What compare_one reports for finite values, written out over whole arrays: the
    tolerance formula as one expression (in tolerance()'s operation order), then error,
    ratio (0 where the error is 0), relative error and the FIRST worst element in C order."""
    e = np.asarray(expected, np.float64)
    if observable in EXACT:
        tol = np.zeros(e.shape)
    else:
        store = storage_dtype(observable, case)
        k_mag = SAFETY * UNIT_ROUNDOFF[ACCUMULATION_DTYPE[case.input.dtype]] * growth(case)
        tol = (np.abs(np.asarray(magnitude, np.float64)) * k_mag
               + (np.abs(e) * UNIT_ROUNDOFF[store] + UNDERFLOW[store]) * (SAFETY * (step + 1)))
        if spread is not None:
            tol = tol + spread
    tol = np.broadcast_to(tol, e.shape)
    err = np.abs(np.asarray(actual, np.float64) - e)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(err == 0, 0.0, err / tol)
        rel = np.where(err == 0, 0.0, err / np.abs(e))
    if e.size == 0:
        return dict(max_abs_err=0.0, max_rel_err=0.0, tol_at_worst=0.0, ratio=0.0)
    w = int(np.argmax(ratio))
    return dict(max_abs_err=float(err.max()), max_rel_err=float(rel.max()), tol_at_worst=float(tol.ravel()[w]),
                ratio=float(ratio.ravel()[w]))


def fast(actual, expected, magnitude, observable, case, step, spread=None, block=BLOCK):
    return _compare_finite(np.asarray(actual), np.asarray(expected, np.float64),
                           _Tolerance(expected, magnitude, observable, case, step, spread), block=block)


def check(actual, expected, magnitude, observable="output", case=CASE32, step=0, spread=None,
          blocks=(1, 3, 64, BLOCK)):
    """The blocked path equals the reference exactly for several block sizes (one element,
    odd blocks that leave a partial last block, the default), and compare_one reports it."""
    want = reference(actual, expected, magnitude, observable, case, step, spread)
    for block in blocks:
        got = fast(actual, expected, magnitude, observable, case, step, spread, block)
        assert got == want, (block, got, want)
    c = compare_one(actual, np.asarray(expected, np.float64), magnitude, observable, case, step, check_dtype=False,
                    spread=spread)
    assert (c.max_abs_err, c.max_rel_err, c.tol_at_worst, c.ratio) == tuple(want[k] for k in
                                                                            ("max_abs_err", "max_rel_err",
                                                                             "tol_at_worst", "ratio"))
    assert c.passed == (want["ratio"] <= 1.0)
    return want


@pytest.mark.parametrize("shape", [(), (1,), (5,), (3, 4, 5), (2, 3, 33, 7)])
@pytest.mark.parametrize("dtype", ["float64", "float32", "float16"])
def test_blocked_comparison_equals_the_formula_on_random_inputs(shape, dtype):
    rng = np.random.default_rng(11)
    for trial in range(6):
        e = rng.normal(0.3, 1.2, shape) * 10.0 ** rng.integers(-3, 4)
        mag = np.abs(e) + np.abs(rng.standard_normal(shape))
        scale = [1e-9, 1e-7, 1e-5, 1e-2, 1.0, 0.0][trial]
        a = (e + rng.standard_normal(shape) * scale * (np.abs(e) + 1)).astype(dtype)
        spread = np.abs(rng.standard_normal(shape)) * 1e-6 if trial % 2 else None
        for observable, step in (("output", 0), ("grad_input", 1), ("running_var", 2)):
            check(a, e, mag, observable, CASE32 if dtype != "float16" else CASE16, step, spread)


def test_adversarial_finite_inputs():
    # zeros everywhere: zero error over zero-ish tolerances, zero expected values
    z = np.zeros(10)
    assert check(z, z, z)["ratio"] == 0.0
    # a nonzero error over a zero tolerance (an exact observable): infinitely out
    got = check(np.array([3.0, 4.0]), np.array([3.0, 5.0]), np.zeros(2), "num_batches_tracked")
    assert got["ratio"] == math.inf and got["tol_at_worst"] == 0.0
    # zero expected, nonzero actual: infinite relative error, finite ratio
    got = check(np.array([1e-30, 0.0, 2.0]), np.array([0.0, 0.0, 2.0]), np.ones(3), case=CASE)
    assert got["max_rel_err"] == math.inf and math.isfinite(got["ratio"])
    # subnormals: the tolerance is the underflow term; the errors are subnormal
    tiny = np.array([5e-324, 1e-310, -2e-312, 0.0, 3e-320])
    check(tiny * 3, tiny, np.zeros(5), case=CASE)
    check(np.float32(1e-45) * np.arange(6, dtype=np.float32), np.full(6, 1e-45), np.zeros(6))
    # huge offsets: mean 1e300 with tiny spreads, and values near float32's range
    rng = np.random.default_rng(3)
    big = 1e300 + rng.standard_normal(50) * 1e285
    check(big * (1 + 1e-15), big, np.abs(big), case=CASE)
    near = rng.uniform(3e38, 3.4e38, 50)
    check(near.astype(np.float32), near, np.abs(near))
    # negative and mixed signs, a magnitude with negative entries (the formula takes |magnitude|)
    e = rng.standard_normal(100) * 1e4
    check((e + 1e-3).astype(np.float32), e, -np.abs(e))


def test_ties_and_the_worst_element_is_the_first_maximum_in_c_order():
    # Equal ratios at indices 2, 40 and 99 (in different blocks for every block size but the
    # default) with different tolerances: at 40 and 99 every quantity is exactly twice that at 2
    # (float64: the underflow term vanishes in the rounding), so err / tol ties exactly. The
    # worst element is index 2, with its own tolerance.
    e, mag = np.ones(100), np.ones(100)
    a = e.copy()
    a[2] = 1.5
    for i in (40, 99):
        e[i], a[i], mag[i] = 2.0, 3.0, 2.0
    want = check(a, e, mag, case=CASE)
    assert want["ratio"] > 1
    assert want["tol_at_worst"] == tolerance(e[2:3], mag[2:3], "output", CASE, 0)[0]
    assert want["tol_at_worst"] * 2 == tolerance(e[40:41], mag[40:41], "output", CASE, 0)[0]
    # A NaN tolerance (a NaN spread): its ratio wins, as np.argmax's would.
    spread = np.zeros(100)
    spread[60] = np.nan
    a[60] = 1.25
    got = fast(a, e, mag, "output", CASE, 0, spread, block=7)
    assert math.isnan(got["ratio"]) and math.isnan(got["tol_at_worst"])
    # ... and on a zero error a NaN tolerance is still no failure (ratio 0, as the general path)
    assert fast(e, e, np.ones(100), "output", CASE, 0, spread, block=7)["ratio"] == 0.0


def test_non_contiguous_and_broadcast_operands():
    rng = np.random.default_rng(5)
    e = rng.standard_normal((4, 6, 5))
    a = np.ascontiguousarray(np.moveaxis((e + 1e-6).astype(np.float32), 1, -1))   # channels last in memory
    a = np.moveaxis(a, -1, 1)                                                    # viewed NCHW: not C-contiguous
    assert not a.flags.c_contiguous
    a[1, 2, 3] += np.float32(0.5)
    check(a, e, np.abs(e))
    # a per-channel magnitude and a scalar spread broadcast against the value's shape
    check(a, e, np.abs(e).mean(axis=(0, 2), keepdims=True), spread=np.float64(1e-7))


def test_values_the_fast_path_cannot_judge_go_to_the_general_path():
    e = np.array([1.0, 2.0, -np.inf])
    for a in (np.array([1.0, np.nan, -np.inf]), np.array([1.0, 2.0, -np.inf]), np.array([np.inf, 2.0, 1.0])):
        assert fast(a, e, np.ones(3), "output", CASE, 0, block=2) is None
    assert fast(np.array([-1.7e308, 0.0]), np.array([1.7e308, 0.0]), np.ones(2), "output", CASE, 0) is None  # overflow
    # The general path's verdicts (unchanged code) on those
    assert compare_one(np.array([1.0, 2.0, -np.inf]), e, np.ones(3), "output", CASE, 0).passed
    c = compare_one(np.array([1.0, np.nan, -np.inf]), e, np.ones(3), "output", CASE, 0)
    assert not c.passed and "NaN" in c.message
    c = compare_one(np.array([-1.7e308, 0.0]), np.array([1.7e308, 0.0]), np.ones(2), "output", CASE, 0)
    assert not c.passed and c.ratio == math.inf


def test_one_large_array():
    """2^21 + 5 values (a partial last block), float32 actuals as a framework returns them, a
    spread, the worst element planted in the last block with a tie earlier on."""
    n = (1 << 21) + 5
    rng = np.random.default_rng(21)
    e = rng.normal(0.3, 1.2, n)
    mag = np.abs(e) * 2 + 0.5
    a = (e + rng.standard_normal(n) * 1e-7).astype(np.float32)
    a[n - 2] = np.float32(e[n - 2] + 0.25)
    e[1000], mag[1000], a[1000] = e[n - 2], mag[n - 2], a[n - 2]   # the same element twice: a tie
    spread = np.abs(rng.standard_normal(n)) * 1e-8
    spread[1000] = spread[n - 2]
    want = check(a, e, mag, "grad_input", CASE32, 1, spread, blocks=(BLOCK, 5000))
    assert want["ratio"] > 1 and want["tol_at_worst"] == reference(a[:1001], e[:1001], mag[:1001], "grad_input",
                                                                   CASE32, 1, spread[:1001])["tol_at_worst"]


def test_tolerance_blocks_are_the_whole_tolerance_bit_for_bit():
    rng = np.random.default_rng(9)
    e = rng.standard_normal((3, 50)) * 1e3
    mag = np.abs(rng.standard_normal((3, 50)))
    for spread in (None, np.abs(rng.standard_normal((3, 50)))):
        for observable, step in (("output", 0), ("running_mean", 3), ("num_batches_tracked", 1)):
            whole = np.broadcast_to(tolerance(e, mag, observable, CASE16, step, spread), e.shape).ravel()
            t = _Tolerance(e, mag, observable, CASE16, step, spread)
            out, scratch = np.empty(150), np.empty(150)
            for start in range(0, 150, 40):
                stop = min(start + 40, 150)
                t.fill(start, stop, out[start:stop], np.abs(e.ravel()[start:stop]), scratch[start:stop])
            assert np.array_equal(out, whole)


def test_the_textbook_tolerance_gives_the_same_verdict_to_3_digits():
    """The module docstring's formula in its own association order: the in-place order
    changes the ratio in the last bits only (far below the 3 digits reported)."""
    rng = np.random.default_rng(2)
    e = rng.normal(0.3, 1.2, 4096)
    mag = np.abs(e) + 1
    a = (e + rng.standard_normal(4096) * 1e-6).astype(np.float32)
    c = compare_one(a, e, mag, "grad_input", CASE32, 1)
    tol = SAFETY * (2.0**-24 * math.sqrt(CASE32.input.reduction_size) * mag + (2.0**-24 * np.abs(e) + 2.0**-150) * 2)
    text = float(np.max(np.abs(a - e) / tol))
    assert f"{c.ratio:.3g}" == f"{text:.3g}" and c.passed == (text <= 1)


# ---- the oracle's in-place arithmetic is the written formulas, bit for bit


def same(x, y):
    return x.shape == y.shape and np.array_equal(x, y, equal_nan=True) and np.array_equal(np.signbit(x), np.signbit(y))


@pytest.mark.parametrize("axis", [1, -1])
def test_normalize_and_backward_are_the_formulas_bit_for_bit(axis):
    rng = np.random.default_rng(4)
    x = rng.normal(3.0, 2.0, (6, 3, 5, 4) if axis == 1 else (6, 5, 4, 3))
    x[(slice(None), 1) if axis == 1 else (..., 1)] = np.nan   # a NaN channel
    g = rng.standard_normal(x.shape)
    mean, var = oracle.batch_stats(x, axis)
    w, b, eps = rng.standard_normal(3), rng.standard_normal(3), 1e-5
    cv = lambda v: channel_view(v, x.ndim, axis)  # noqa: E731
    axes = reduce_axes(x.ndim, axis)
    with np.errstate(invalid="ignore"):
        assert same(oracle.normalize(x, mean, var, eps, w, b, axis),
                    (x - cv(mean)) / np.sqrt(cv(var) + eps) * cv(w) + cv(b))
        invstd = 1.0 / np.sqrt(var + eps)
        x_hat = (x - cv(mean)) * cv(invstd)
        want = (cv(w * invstd) * (g - g.mean(axis=axes, keepdims=True)
                                  - x_hat * (g * x_hat).mean(axis=axes, keepdims=True)),
                (g * x_hat).sum(axis=axes), g.sum(axis=axes))
        for got, ref in zip(oracle.backward_batch_stats(g, x, mean, var, eps, w, axis), want):
            assert same(got, ref)


@pytest.mark.parametrize("axis", [1, -1])
def test_simulated_magnitudes_are_the_formulas_bit_for_bit(axis):
    """The output and input-gradient magnitudes of a train forward + backward (the
    running-error formulas of simulate, written out)."""
    case = make_case([{"op": "forward", "mode": "train"}, {"op": "backward"}, {"op": "forward", "mode": "eval"}],
                     {"init": {"weight": [0.5, -2.0, 1.5], "bias": [0.1, 0.2, -0.3]}},
                     shape=(5, 3, 7) if axis == 1 else (5, 7, 3), channel_axis=axis)
    arrays = generate(case)
    exp = simulate(case, arrays, CANONICAL)
    x, g = arrays.batches[0].astype(np.float64), arrays.grad_outputs[1].astype(np.float64)
    cv = lambda v: channel_view(v, x.ndim, axis)  # noqa: E731
    axes = reduce_axes(x.ndim, axis)
    w, b = np.abs(np.asarray(arrays.init["weight"], np.float64)), np.abs(np.asarray(arrays.init["bias"], np.float64))
    mean, var = oracle.batch_stats(x, axis)
    abs_mean = np.abs(x).mean(axis=axes)
    mean_mag = np.maximum(abs_mean, np.abs(mean))
    invstd = 1.0 / np.sqrt(var + case.layer.eps)
    y_mag = cv(w * invstd) * (np.abs(x) + cv(mean_mag)) + cv(b)
    assert same(exp.values[(0, "output")].magnitude, y_mag)
    xh_mag = (np.abs(x) + cv(mean_mag)) * cv(invstd)
    dx_mag = cv(w * invstd) * (np.abs(g) + np.abs(g).mean(axis=axes, keepdims=True)
                               + xh_mag * (np.abs(g) * xh_mag).mean(axis=axes, keepdims=True))
    assert same(exp.values[(1, "grad_input")].magnitude, dx_mag)
    assert same(exp.values[(1, "grad_weight")].magnitude, (np.abs(g) * xh_mag).sum(axis=axes))
    assert same(exp.values[(1, "grad_bias")].magnitude, np.abs(g).sum(axis=axes))


def test_a_whole_tolerance_array_is_accepted_too():
    """_compare_finite also takes the tolerance as an array broadcastable to the value's shape."""
    rng = np.random.default_rng(8)
    e = rng.standard_normal((3, 4, 5))
    a = (e + 1e-4).astype(np.float32)
    tol = np.abs(rng.standard_normal((3, 1, 5))) * 1e-3
    want = _compare_finite(a, e, np.broadcast_to(tol, e.shape).copy(), block=7)
    assert _compare_finite(a, e, tol) == want == _compare_finite(a, e, tol, block=1)
