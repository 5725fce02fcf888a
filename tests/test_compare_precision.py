"""The precision envelope in the comparison: spread added to the tolerance,
unbounded elements, when a precision divergence manifests, and NumPy
implementations of the documented algorithms judged end to end."""

import math
from pathlib import Path

import numpy as np
import pytest

from bnconform.arrays import generate
from bnconform.catalogue import OBSERVABLES, Case, load_catalogue
from bnconform.compare import compare_one, expectations_agree, tolerance
from bnconform.engine import run_cell
from bnconform.expect import for_adapter, parse
from bnconform.oracle import CANONICAL, simulate

from .numpy_bn import MUTANTS, NumpyBatchNorm

ROOT = Path(__file__).resolve().parents[1]
CATALOGUE = load_catalogue([ROOT / "cases"], ROOT)
ALL = frozenset(OBSERVABLES)


def case(steps=None, dtype="float32", shape=(4, 3, 2, 2), dist=None):
    return Case.model_validate({
        "id": "t", "title": "t", "behaviour": "t", "source": [{"title": "test"}],
        "layer": {"num_features": shape[1]},
        "input": {"shape": list(shape), "dtype": dtype, "seed": 5, "distribution": dist or {"mean": 0.0, "std": 1.0}},
        "steps": steps or [{"op": "forward", "mode": "train"}],
    })


def test_spread_is_added_to_the_canonical_tolerance_and_none_changes_nothing():
    c = case()
    e, mag, sp = np.array([1.0, 2.0]), np.array([1.0, 3.0]), np.array([0.5, 0.0])
    base = tolerance(e, mag, "output", c, 0)
    assert np.array_equal(tolerance(e, mag, "output", c, 0, None), base)
    assert np.array_equal(tolerance(e, mag, "output", c, 0, sp), base + sp)
    # an error of 0.4 passes only with the spread
    a = np.array([1.4, 2.0], np.float32)
    assert not compare_one(a, e, mag, "output", c, 0).passed
    assert compare_one(a, e, mag, "output", c, 0, spread=sp).passed


def test_unbounded_elements_are_not_judged_and_are_counted():
    c = case()
    e, mag = np.array([np.nan, 1.0, 2.0]), np.ones(3)
    sp = np.array([np.inf, np.inf, 0.0])
    r = compare_one(np.array([5.0, np.nan, 2.0], np.float32), e, mag, "output", c, 0, spread=sp)
    assert r.passed and r.unbounded == 2 and r.to_dict()["unbounded"] == 2
    bad = compare_one(np.array([5.0, np.nan, 3.0], np.float32), e, mag, "output", c, 0, spread=sp)
    assert not bad.passed  # the bounded element is still judged
    # without the spread the same NaNs are structural failures
    assert not compare_one(np.array([5.0, np.nan, 2.0], np.float32), e, mag, "output", c, 0).passed


def _agree(c, **options):
    arrays = generate(c)
    return expectations_agree(simulate(c, arrays), simulate(c, arrays, CANONICAL.with_options("p", **options)), c, ALL)


def test_a_wider_envelope_manifests_even_where_the_values_agree():
    # Zero-mean float32 data: the one-pass value is within the canonical tolerance, but its
    # envelope is wider, so the divergence manifests (no cliff between conforms and known_bug).
    train = case()
    assert not _agree(train, variance_algorithm="one_pass_clamped")
    assert not _agree(case(dtype="float64"), compute_dtype="float32")
    # Nothing computes a batch variance in eval: the variance algorithm cannot manifest there.
    assert _agree(case([{"op": "forward", "mode": "eval"}]), variance_algorithm="one_pass")
    # A dtype that is not narrower than the default widens nothing.
    assert _agree(train, compute_dtype="float32")


def test_semantic_knobs_keep_the_value_rule():
    # eps rounded to float32 moves float32 values by far less than their tolerance: still agrees
    # (its incidental effect on the magnitudes is not a wider envelope).
    assert _agree(case(), eps_dtype="float32")
    assert not _agree(case(dtype="float64"), eps_dtype="float32")
    assert not _agree(case(shape=(0, 3)), empty_batch_update="nan")
    assert _agree(case(shape=(0, 3)), empty_batch_update="skip")


def _quirk(id: str, **options):
    """One documented quirk with these oracle options (an expectations entry)."""
    return parse(f"entries: [{{id: {id}, kind: quirk, summary: s, source: test, options: {options!r}}}]",
                 "test.yaml").entries


def _numpy_row(algorithm: str, declared: bool):
    class Row(NumpyBatchNorm):
        name = f"numpy {algorithm}"
        variance_algorithm = algorithm

    row = Row()  # its own expectations (the documented rejection of one value per channel), plus the quirk
    return row, for_adapter(row) + (_quirk(algorithm.replace("_", "-"), variance_algorithm=algorithm) if declared else ())


def _headroom(record) -> float:
    ratios = [c["ratio"] for c in record.comparisons if c.get("ratio") is not None]
    return 1.0 / max(ratios) if ratios and max(ratios) > 0 else math.inf


@pytest.mark.parametrize("algorithm", ["one_pass", "one_pass_clamped"])
def test_a_one_pass_implementation_matches_its_profile_on_the_whole_catalogue(algorithm):
    # The NumPy row sums like a SIMD CPU loop (8 lanes), not like the oracle's emulation.
    row, quirk = _numpy_row(algorithm, True)
    declared = [run_cell(c, row, "0", expectations=quirk) for c in CATALOGUE.cases]
    assert {r.verdict for r in declared} <= {"conforms", "quirk"}, \
        [(r.case_id, r.reason) for r in declared if r.verdict not in ("conforms", "quirk")]
    assert min(_headroom(r) for r in declared) >= 1.5
    # Wherever a batch variance is computed the divergence manifests; nowhere else.
    assert {r.case_id for r in declared if r.verdict == "quirk"} >= {"large-offset-small-spread", "momentum-one"}
    assert "eval-given-running-stats" in {r.case_id for r in declared if r.verdict == "conforms"}
    # Undeclared, the same implementation fails the ill-conditioned cases.
    row, own = _numpy_row(algorithm, False)
    undeclared = {r.case_id: r.verdict for r in (run_cell(c, row, "0", expectations=own) for c in CATALOGUE.cases)}
    assert undeclared["large-offset-small-spread"] == "fails" and undeclared["large-offset-backward"] == "fails"


@pytest.mark.parametrize("mode", ["nan", "zero"])
def test_an_empty_batch_update_is_judged_against_its_knob(mode):
    empty = next(c for c in CATALOGUE.cases if c.id == "empty-batch")

    class Row(NumpyBatchNorm):
        name, empty_batch_update = f"numpy empty {mode}", mode

    assert run_cell(empty, Row(), "0", expectations=_quirk(mode, empty_batch_update=mode)).verdict == "quirk"
    assert run_cell(empty, Row(), "0", expectations=()).verdict == "fails"


@pytest.mark.parametrize("mutant", MUTANTS, ids=lambda m: m.name)
def test_the_one_pass_envelope_still_catches_every_injected_bug(mutant):
    # A one-pass row with a classic BN bug, declared one-pass: the wider envelope must not hide the bug.
    class Row(mutant):
        variance_algorithm = "one_pass_clamped"

    row = Row()
    declared = for_adapter(row) + _quirk("one-pass", variance_algorithm="one_pass_clamped")
    assert any(run_cell(c, row, "0", expectations=declared).verdict == "fails" for c in CATALOGUE.cases), mutant.name


# ---- ema_form: subtract, judged on the explored cases (promoted: cases/explored.yaml explored-s11-tf-nn-moments-tf-nn-batch-normalization-1; its siblings 2 and 6 in git history)

def _tf_moments_program(c: Case, arrays) -> dict:
    """The tf.nn rows' program (``adapters/tf_nn.py``) written in NumPy float32 from TensorFlow's
    source, not from the oracle: ``tf.nn.moments`` (mean, then the mean of squared differences),
    ``tf.nn.batch_normalization`` (``inv = rsqrt(var + eps) * scale; x * inv + (offset - mean * inv)``)
    and ``assign_moving_average``'s ``running -= (running - batch) * c``, ``c = fl32(1 - decay)``."""
    f32, L, out = np.float32, c.layer, {}
    rm, rv = arrays.init["running_mean"].astype(f32), arrays.init["running_var"].astype(f32)
    w = arrays.init["weight"].astype(f32) if L.affine else np.ones(L.num_features, f32)
    b = arrays.init["bias"].astype(f32) if L.affine else np.zeros(L.num_features, f32)
    cf = f32(1.0 - (1.0 - L.momentum))
    for i, step in enumerate(c.steps):
        x = arrays.batches[step.batch].astype(f32)
        if step.mode == "train":
            mean = x.mean(axis=0, dtype=f32)
            var = np.square(x - mean).mean(axis=0, dtype=f32)
            rm, rv = rm - (rm - mean) * cf, rv - (rv - var) * cf
        else:
            mean, var = rm, rv
        inv = (f32(1) / np.sqrt(var + f32(L.eps))) * w
        out[(i, "output")] = x * inv + (b - mean * inv)
        out[(i, "running_mean")], out[(i, "running_var")] = rm.copy(), rv.copy()
    return out


@pytest.mark.parametrize("layer, steps", [
    ({"momentum": 1.0}, ["train", "eval"]),                    # explored cases 1 and 6
    ({"momentum": 1.0, "affine": False}, ["train"]),           # explored case 2
    ({"momentum": 0.99}, ["train", "train", "train", "eval"]),  # several updates accumulate
], ids=["explored-1-6", "explored-2", "momentum-0.99-three-updates"])
def test_the_subtract_envelope_covers_tensorflows_update_and_the_canonical_form_does_not(layer, steps):
    c = Case.model_validate({
        "id": "t", "title": "t", "behaviour": "t", "source": [{"title": "test"}], "layer": {"num_features": 1, **layer},
        "input": {"shape": [2, 1], "distribution": {"kind": "uniform", "high": 0.001}},
        "steps": [{"op": "forward", "mode": m} for m in steps]})
    arrays = generate(c)
    actual = _tf_moments_program(c, arrays)
    judged = {}
    for name, options in (("subtract", {"ema_form": "subtract"}), ("interpolate", {})):
        ex = simulate(c, arrays, CANONICAL.with_options(name, running_var_correction="biased", **options)).values
        judged[name] = {k: compare_one(a, ex[k].value, ex[k].magnitude, k[1], c, k[0], spread=ex[k].spread)
                        for k, a in actual.items()}
    assert all(r.passed for r in judged["subtract"].values()), \
        {k: r.ratio for k, r in judged["subtract"].items() if not r.passed}
    assert not judged["interpolate"][(0, "running_var")].passed  # the knob is needed: ~u |old running_var|
    if steps == ["train", "eval"]:  # explored 1, 6: the eval forward normalises with that running_var
        assert not judged["interpolate"][(1, "output")].passed
