"""Issue 20's additions to the oracle, the selectors and the engine, pinned by hand-derived values."""

import numpy as np

from bnconform.arrays import generate
from bnconform.catalogue import Case
from bnconform.engine import run_cell
from bnconform.expect import Where
from bnconform.oracle import CANONICAL, simulate

from .numpy_bn import NumpyBatchNorm


def case(**over) -> Case:
    data = dict(id="t", title="t", behaviour="t", source=[{"title": "t"}], layer={"num_features": 2, "momentum": 0.25},
                input={"shape": [4, 2], "seed": 3}, steps=[{"op": "forward", "mode": "train"},
                                                           {"op": "forward", "mode": "eval"}])
    data.update(over)
    return Case.model_validate(data)


def test_eval_zero_debias_divides_by_one_minus_decay_power():
    c = case()
    arrays = generate(c)
    x = arrays.batches[0].astype(np.float64)
    mean, var = x.mean(0), x.var(0)
    rm, rv = 0.25 * mean, 0.75 + 0.25 * var * 4 / 3  # one canonical update from (0, 1)
    out = simulate(c, arrays, CANONICAL.with_options("d", eval_zero_debias=True)).values
    # t = 1 update, decay 0.75: divide by 1 - 0.75 = 0.25
    expected = (x - rm / 0.25) / np.sqrt(rv / 0.25 + 1e-5)
    assert np.allclose(out[(1, "output")].value, expected, rtol=1e-12)
    assert np.allclose(out[(1, "running_var")].value, rv, rtol=1e-12)  # the state stays the plain average
    # no update yet: nothing to debias
    eval_only = case(steps=[{"op": "forward", "mode": "eval"}])
    a2 = generate(eval_only)
    same = simulate(eval_only, a2, CANONICAL.with_options("d", eval_zero_debias=True)).values[(0, "output")].value
    assert np.allclose(same, simulate(eval_only, a2).values[(0, "output")].value, rtol=0, atol=0)


def test_aliased_affine_update_scales_with_the_updated_running_statistics():
    c = case(steps=[{"op": "forward", "mode": "train"}])  # default init: weight 1 = running_var 1, bias 0 = mean 0
    arrays = generate(c)
    x = arrays.batches[0].astype(np.float64)
    mean, var = x.mean(0), x.var(0)
    new_rm, new_rv = 0.25 * mean, 0.75 + 0.25 * var  # biased, as ONNX
    profile = CANONICAL.with_options("a", aliased_affine_update=True, running_var_correction="biased")
    y = simulate(c, arrays, profile).values[(0, "output")].value
    assert np.allclose(y, (x - mean) / np.sqrt(var + 1e-5) * new_rv + new_rm, rtol=1e-12)
    # distinct initial values: nothing aliased, the canonical output
    c2 = case(steps=[{"op": "forward", "mode": "train"}], layer={"num_features": 2, "momentum": 0.25,
                                                               "init": {"weight": [2.0, 3.0], "bias": [0.5, 0.5]}})
    a2 = generate(c2)
    assert np.array_equal(simulate(c2, a2, profile).values[(0, "output")].value,
                          simulate(c2, a2, CANONICAL.with_options("b", running_var_correction="biased"))
                          .values[(0, "output")].value)


def test_new_selectors():
    default, distinct = case(), case(layer={"num_features": 2, "init": {"weight": [2.0, 3.0], "bias": [0.5, 0.5]}})
    assert Where(equal_initial_values=True).matches(default)
    assert not Where(equal_initial_values=True).matches(distinct)
    assert Where(equal_initial_values=True).matches(case(layer={"num_features": 2, "affine": False}))
    assert Where(nonempty_batches=True).matches(default)
    assert Where(nonempty_batches=False).matches(case(input={"shape": [0, 2]}))


def test_composite_case_is_unsupported_without_blocks():
    c = case(pre={"kind": "linear"}, input={"shape": [4, 3], "seed": 3})

    class Alone(NumpyBatchNorm):
        blocks = frozenset()

    r = run_cell(c, Alone(), "0")
    assert r.verdict == "unsupported" and "composite" in r.reason
    assert run_cell(c, NumpyBatchNorm(), "0").verdict == "conforms"
