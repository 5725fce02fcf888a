"""Realistic sizes (issue 21): the theme ``cases/realistic.yaml``, the oracle and the
tolerance model at 2^18..2^21 values per channel, the ``large`` marker, the cost
measures (one input generation per case and process, one large case cached at a
time, the vectorised comparison), and a float16-accumulating BatchNorm that the
suite lets through on small reductions and catches at real network sizes.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from bnconform import engine
from bnconform.catalogue import LARGE_REDUCTION_SIZE, load_catalogue
from bnconform.compare import _compare_finite, compare_one, tolerance
from bnconform.engine import run_cell
from bnconform.oracle import CANONICAL, UNIT_ROUNDOFF, simulate

from .numpy_bn import MutantHalfAccumulation, NumpyBatchNorm, _half_lanes_sum

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[1]
CATALOGUE = load_catalogue([ROOT / "cases"], ROOT)
REALISTIC = [c for c in CATALOGUE.cases if c.theme == "realistic"]
BY_ID = {c.id: c for c in CATALOGUE.cases}


def test_theme_has_the_sizes_the_issue_asks_for():
    assert len(REALISTIC) >= 10
    big = [c for c in REALISTIC if c.input.reduction_size >= 2**18]
    assert len(big) >= 4
    assert {c.input.dtype for c in big} >= {"float32", "float16", "bfloat16"}
    assert max(c.input.reduction_size for c in REALISTIC) >= 2**21
    assert {c.input.axis == 1 for c in REALISTIC} == {True, False}   # channels-first and channels-last
    trained = [c for c in big if c.trains and any(s.op == "backward" for s in c.steps)
               and any(getattr(s, "mode", None) == "eval" for s in c.steps)]
    assert len(trained) >= 4 and {c.input.dtype for c in trained} >= {"float16", "bfloat16"}


def test_the_large_tag_is_the_size_and_the_size_is_large():
    """The tag ``large`` (selectors, report) and the pytest marker (``Case.large``) say the same thing."""
    for case in CATALOGUE.cases:
        assert ("large" in case.tags) == case.large == (case.input.reduction_size >= LARGE_REDUCTION_SIZE), case.id


def test_not_large_deselects_exactly_the_large_cells(pytester, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    pytester.makeconftest('pytest_plugins = ["bnconform.plugin"]\n')
    (pytester.path / "cases").mkdir()
    (pytester.path / "cases" / "realistic.yaml").write_text((ROOT / "cases" / "realistic.yaml").read_text())
    adapter = ("--adapter", "tests.numpy_bn:NumpyBatchNorm", "-p", "no:cacheprovider")
    quick = pytester.runpytest_subprocess(*adapter, "--co", "-q", "-m", "not large")
    only = pytester.runpytest_subprocess(*adapter, "--co", "-q", "-m", "large")
    n_large = sum(c.large for c in REALISTIC)
    assert 0 < n_large < len(REALISTIC)
    quick.stdout.fnmatch_lines([f"{len(REALISTIC) - n_large}/{len(REALISTIC)} tests collected ({n_large} deselected)*"])
    only.stdout.fnmatch_lines([f"{n_large}/{len(REALISTIC)} tests collected*"])


# ---- the oracle at scale, against a compensated / extended-precision recomputation

def _reference_stats(x: np.ndarray, g: np.ndarray, axis: int):
    """Per-channel mean, biased variance, grad_bias and grad_weight of the largest case,
    recomputed without the oracle: ``math.fsum`` (exactly rounded sums) for the sums
    of the data, ``np.longdouble`` for the deviations and products."""
    c = x.shape[axis]
    xs = np.moveaxis(x, axis, 0).reshape(c, -1).astype(np.float64)
    gs = np.moveaxis(g, axis, 0).reshape(c, -1).astype(np.float64)
    m = xs.shape[1]
    mean = np.array([math.fsum(row) / m for row in xs])
    dev = xs.astype(np.longdouble) - mean[:, None].astype(np.longdouble)
    var = np.array([math.fsum((d * d).astype(np.float64)) for d in dev]) / m
    x_hat = dev / np.sqrt(var.astype(np.longdouble) + np.longdouble(1e-5))[:, None]
    grad_bias = np.array([math.fsum(row) for row in gs])
    grad_weight = np.array([math.fsum((row * xh).astype(np.float64)) for row, xh in zip(gs, x_hat)])
    return mean, var, grad_bias, grad_weight


def _largest_train_case():
    return max((c for c in REALISTIC if c.trains and c.input.dtype == "float32"),
               key=lambda c: c.input.reduction_size)


def test_oracle_error_at_2_21_values_is_negligible_against_the_tolerance():
    """The float64 oracle is the reference at the largest size: its batch statistics and
    parameter gradients differ from an fsum / longdouble recomputation by at most the
    float64 summation bound (u_64 * sqrt(m) * magnitude, the tolerance formula at float64),
    i.e. ~2^-29 of the float32 tolerance the frameworks are judged with."""
    case = _largest_train_case()
    m = case.input.reduction_size
    assert m >= 2**21
    arrays = engine._arrays(case)
    exp = simulate(case, arrays, CANONICAL)
    x, g = arrays.batches[0], arrays.grad_outputs[1]
    mean, var, grad_bias, grad_weight = _reference_stats(x, g, case.input.axis)
    f = case.layer.momentum
    got = {
        "running_mean": (exp.values[(0, "running_mean")], f * mean),
        "running_var": (exp.values[(0, "running_var")], (1 - f) * 1.0 + f * var * m / (m - 1)),
        "grad_bias": (exp.values[(1, "grad_bias")], grad_bias),
        "grad_weight": (exp.values[(1, "grad_weight")], grad_weight),
    }
    for name, (e, ref) in got.items():
        oracle_err = np.abs(e.value - ref)
        float64_bound = 4 * UNIT_ROUNDOFF["float64"] * (math.sqrt(m) * e.magnitude + np.abs(ref))
        assert np.all(oracle_err <= float64_bound), (name, oracle_err, float64_bound)
        judged_with = tolerance(e.value, e.magnitude, name, case, 0 if name.startswith("running") else 1)
        assert np.all(oracle_err <= judged_with * 2.0**-20), name


def test_the_fsum_check_catches_a_float32_oracle():
    """Power of the check above: the same statistics summed in float32 (NumPy's pairwise
    float32 sum) leave the float64 bound at 2^21 values."""
    case = _largest_train_case()
    m = case.input.reduction_size
    arrays = engine._arrays(case)
    x = np.moveaxis(arrays.batches[0], case.input.axis, 0).reshape(case.layer.num_features, -1)
    mean, var, _, _ = _reference_stats(arrays.batches[0], arrays.grad_outputs[1], case.input.axis)
    mean32 = x.astype(np.float32).sum(axis=1, dtype=np.float32) / np.float32(m)
    magnitude = np.abs(x.astype(np.float64)).mean(axis=1)
    float64_bound = 4 * UNIT_ROUNDOFF["float64"] * (math.sqrt(m) * magnitude + np.abs(mean))
    assert np.any(np.abs(mean32 - mean) > float64_bound)


# ---- the tolerance keeps following the conditioning

def test_tolerance_grows_like_sqrt_m_in_the_accumulation_dtype():
    small, big = BY_ID["resnet50-late-stage-float32"], BY_ID["segmentation-head-float32"]
    one = np.ones(1)
    zero = np.zeros(1)
    t_small = tolerance(zero, one, "running_mean", small, 0)
    t_big = tolerance(zero, one, "running_mean", big, 0)
    ratio = math.sqrt(big.input.reduction_size / small.input.reduction_size)
    assert t_big[0] / t_small[0] == pytest.approx(ratio, rel=1e-12)
    # Half inputs are judged with float32 accumulation (u_acc = 2^-24), not their own roundoff.
    half = BY_ID["resnet50-stem-float16"]
    t_half = tolerance(zero, one, "running_mean", half, 0)
    assert t_half[0] == pytest.approx(4 * 2.0**-24 * math.sqrt(half.input.reduction_size), rel=1e-12)


# ---- the control conforms at scale (tests/test_power.py); a float16-accumulating mutant does not

def test_half_accumulation_lanes_stagnate_and_overflow():
    ones = np.ones((1, 8 * 4096), np.float16)
    assert _half_lanes_sum(ones, (1,), 0)[0] == 8 * 2048        # each lane stalls at 2048 = 2^11
    big = np.full((1, 8 * 4096), 20.0, np.float16)
    assert np.isinf(_half_lanes_sum(big, (1,), 0)[0])            # 8 lanes of 4096 * 20 > 65504


def test_float16_accumulating_mutant_passes_small_and_fails_at_scale():
    """MutantHalfAccumulation declares its float16 accumulation (an oracle envelope growing
    like sqrt(m)): on the small float16 cases it is within that envelope (a passing
    ``quirk``); on the realistic float16 training cases (>= 2^18 values per channel) its
    partial sums stagnate and overflow and it ``fails``."""
    half_train = [c for c in CATALOGUE.cases if c.input.dtype == "float16" and c.trains]
    small = [c for c in half_train if c.input.reduction_size <= 256]
    big = [c for c in half_train if c.input.reduction_size >= 2**18]
    assert small and len(big) >= 2
    for case in small:
        assert run_cell(case, MutantHalfAccumulation(), "0").verdict == "quirk", case.id
    for case in big:
        record = run_cell(case, MutantHalfAccumulation(), "0")
        assert record.verdict == "fails", (case.id, record.verdict, record.reason)


# ---- cost: inputs once per case and process, one large case cached, vectorised comparison

def test_inputs_are_generated_once_per_case_and_one_large_case_is_kept(monkeypatch):
    calls = []
    real = engine.generate
    monkeypatch.setattr(engine, "generate", lambda case: calls.append(case.id) or real(case))
    monkeypatch.setattr(engine, "_ARRAYS", {})
    monkeypatch.setattr(engine, "_EXPECT", {})
    monkeypatch.setattr(engine, "_AGREE", {})
    monkeypatch.setattr(engine, "_LARGE", [])
    a, b = BY_ID["audio-long-sequence-bfloat16"], BY_ID["mobilenet-depthwise-bfloat16"]
    small = BY_ID["resnet50-late-stage-float32"]
    assert a.large and b.large and not small.large
    for case in (small, a, a, small):
        engine._expect(case, CANONICAL)
        engine._arrays(case)
    assert calls == [small.id, a.id]
    engine._expect(b, CANONICAL)
    keys = {k[0] for k in engine._EXPECT} | set(engine._ARRAYS)
    assert a.model_dump_json() not in keys               # the previous large case is dropped
    assert {small.model_dump_json(), b.model_dump_json()} <= keys


def _general(actual, expected, tol):
    """The comparison formula written out without the fast path's in-place tricks."""
    a = np.asarray(actual, np.float64)
    err = np.abs(a - expected)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(err == 0, 0.0, err / tol)
        rel = np.where(err == 0, 0.0, err / np.abs(expected))
    w = int(np.argmax(ratio))
    return dict(max_abs_err=err.max(), max_rel_err=rel.max(), tol_at_worst=tol.ravel()[w], ratio=ratio.ravel()[w])


@pytest.mark.parametrize("shape", [(), (5,), (3, 4, 5)])
def test_vectorised_comparison_equals_the_formula(shape):
    rng = np.random.default_rng(7)
    for trial in range(20):
        e = rng.standard_normal(shape)
        a = (e + rng.standard_normal(shape) * 1e-3).astype(np.float32)
        tol = np.abs(rng.standard_normal(shape)) * 1e-3
        if shape and trial % 3 == 0:                      # zeros: exact matches, zero tolerance, zero expected
            a.ravel()[0], e.ravel()[0] = 0.0, 0.0
            tol.ravel()[-1] = 0.0
            a.ravel()[-1] = np.float32(e.ravel()[-1])
            e.ravel()[-1] = float(a.ravel()[-1])
        got, want = _compare_finite(a, e, tol), _general(a, e, tol)
        assert got == pytest.approx(want, rel=0, abs=0), trial


def test_non_finite_values_leave_the_fast_path():
    e = np.array([1.0, 2.0])
    assert _compare_finite(np.array([1.0, np.nan]), e, np.ones(2)) is None
    assert _compare_finite(np.array([1.0, np.inf]), e, np.ones(2)) is None
    case = BY_ID["resnet50-late-stage-float32"]
    c = compare_one(np.array([1.0, np.nan], np.float32), e, np.ones(2), "running_mean", case, 0)
    assert not c.passed and "NaN" in c.message


# ---- summation: recursive (the deterministic bound of one sequential accumulator)

def test_recursive_summation_envelope_is_the_deterministic_bound():
    """``summation: recursive`` adds SAFETY * u_acc * (m - 1) * magnitude to each reduced observable
    (Higham 2002 eq. (4.4)); hand value on grad_bias = sum of g, whose magnitude is sum |g|."""
    case = BY_ID["resnet50-late-stage-float32"]
    arrays = engine._arrays(case)
    prof = CANONICAL.with_options("recursive", summation="recursive")
    exp = simulate(case, arrays, prof)
    m = case.input.reduction_size
    g = np.moveaxis(arrays.grad_outputs[1].astype(np.float64), 1, 0).reshape(case.layer.num_features, -1)
    want = 4.0 * 2.0**-24 * (m - 1) * np.abs(g).sum(axis=1)
    assert np.allclose(exp.values[(1, "grad_bias")].spread, want, rtol=1e-12, atol=0)
    assert np.array_equal(exp.values[(1, "grad_bias")].value, simulate(case, arrays).values[(1, "grad_bias")].value)
    # the running statistics and the output get an envelope too; the canonical profile none
    assert np.all(exp.values[(0, "running_var")].spread > 0) and np.all(exp.values[(0, "output")].spread > 0)
    assert simulate(case, arrays).values[(0, "output")].spread is None
