"""The oracle checked on its own: hand-derived values, float64 finite
differences, train-mode invariants and closed forms of the running averages."""

import numpy as np
import pytest

from bnconform import oracle
from bnconform.arrays import generate
from bnconform.catalogue import Case
from bnconform.oracle import CANONICAL, OracleUndefined, Profile, simulate


def make_case(steps, layer=None, shape=(4, 3, 2, 2), dist=None, **input_kw):
    return Case.model_validate({
        "id": "t", "title": "t", "behaviour": "t", "source": [{"title": "test"}],
        "layer": {"num_features": shape[input_kw.get("channel_axis", 1)], **(layer or {})},
        "input": {"shape": list(shape), "dtype": "float64", "seed": 3, "distribution": dist or {"mean": 1.0, "std": 2.0},
                  **input_kw},
        "steps": steps,
    })


def test_hand_derived_three_values():
    # x = [0, 1, 2]: mean 1, biased var 2/3, unbiased var 1; eps = 1/3 makes var + eps = 1.
    x = np.array([[0.0], [1.0], [2.0]])
    mean, var = oracle.batch_stats(x, axis=1)
    assert mean == pytest.approx([1.0]) and var == pytest.approx([2 / 3])
    y = oracle.normalize(x, mean, var, 1 / 3, np.ones(1), np.zeros(1), axis=1)
    np.testing.assert_allclose(y.ravel(), [-1.0, 0.0, 1.0], atol=1e-15)
    assert oracle.population_variance(var, 3, "unbiased") == pytest.approx([1.0])
    assert oracle.ema(np.array([1.0]), np.array([1.0]), 0.5) == pytest.approx([1.0])
    # g = [1, 0, 0]: x_hat = [-1, 0, 1], mean(g) = 1/3, mean(g x_hat) = -1/3.
    dx, dw, db = oracle.backward_batch_stats(np.array([[1.0], [0.0], [0.0]]), x, mean, var, 1 / 3, np.ones(1), axis=1)
    np.testing.assert_allclose(dx.ravel(), [1 / 3, -1 / 3, 0.0], atol=1e-15)
    assert dw == pytest.approx([-1.0]) and db == pytest.approx([1.0])


def test_two_values_per_channel_have_zero_input_gradient():
    # With m = 2 and eps = 0 the output is (-1, +1) whatever x is, so dL/dx = 0.
    x, g = np.array([[1.0], [3.0]]), np.array([[0.7], [-0.2]])
    mean, var = oracle.batch_stats(x, 1)
    dx, _, _ = oracle.backward_batch_stats(g, x, mean, var, 0.0, np.ones(1), 1)
    np.testing.assert_allclose(dx, 0.0, atol=1e-15)


def test_unbiased_variance_of_one_value_is_undefined():
    with pytest.raises(OracleUndefined):
        oracle.population_variance(np.array([0.0]), 1, "unbiased")


def _numeric_grad(f, a, h=1e-6):
    grad = np.zeros_like(a)
    for idx in np.ndindex(a.shape):
        old = a[idx]
        a[idx] = old + h
        fp = f()
        a[idx] = old - h
        fm = f()
        a[idx] = old
        grad[idx] = (fp - fm) / (2 * h)
    return grad


@pytest.mark.parametrize("axis,shape", [(1, (3, 2, 4)), (-1, (3, 4, 2)), (1, (5, 3))])
@pytest.mark.parametrize("fixed_stats", [False, True])
def test_backward_matches_finite_differences(axis, shape, fixed_stats):
    rng = np.random.default_rng(0)
    c = shape[axis]
    x, g = rng.normal(1.0, 2.0, shape), rng.normal(0, 1, shape)
    w, b = rng.normal(1, 0.5, c), rng.normal(0, 1, c)
    rm, rv, eps = rng.normal(0, 1, c), rng.uniform(0.5, 2, c), 1e-3

    def loss():
        mean, var = (rm, rv) if fixed_stats else oracle.batch_stats(x, axis)
        return float(np.sum(g * oracle.normalize(x, mean, var, eps, w, b, axis)))

    mean, var = (rm, rv) if fixed_stats else oracle.batch_stats(x, axis)
    fn = oracle.backward_global_stats if fixed_stats else oracle.backward_batch_stats
    dx, dw, db = fn(g, x, mean, var, eps, w, axis)
    np.testing.assert_allclose(dx, _numeric_grad(loss, x), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(dw, _numeric_grad(loss, w), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(db, _numeric_grad(loss, b), rtol=1e-6, atol=1e-8)


def test_train_mode_invariants():
    case = make_case([{"op": "forward", "mode": "train"}], {"affine": False, "eps": 0.0})
    arrays = generate(case)
    y = simulate(case, arrays).values[(0, "output")].value
    np.testing.assert_allclose(y.mean(axis=(0, 2, 3)), 0.0, atol=1e-14)
    np.testing.assert_allclose(y.var(axis=(0, 2, 3)), 1.0, rtol=1e-13)


def test_running_stats_are_the_closed_form_ema():
    m, k = 0.3, 5
    steps = [{"op": "forward", "mode": "train", "batch": i} for i in range(k)]
    case = make_case(steps, {"momentum": m, "init": {"running_mean": 0.5, "running_var": 2.0}})
    arrays = generate(case)
    exp = simulate(case, arrays)
    n = case.input.reduction_size
    rm, rv = 0.5 * (1 - m) ** k, 2.0 * (1 - m) ** k
    for i in range(k):
        x = arrays.batches[i]
        w = m * (1 - m) ** (k - 1 - i)
        rm = rm + w * x.mean(axis=(0, 2, 3))
        rv = rv + w * x.var(axis=(0, 2, 3), ddof=1)
    np.testing.assert_allclose(exp.values[(k - 1, "running_mean")].value, rm, rtol=1e-13)
    np.testing.assert_allclose(exp.values[(k - 1, "running_var")].value, rv, rtol=1e-13)
    assert n == 16


def test_cumulative_average_is_the_mean_of_batch_statistics():
    steps = [{"op": "forward", "mode": "train", "batch": i} for i in range(4)]
    case = make_case(steps, {"momentum": None, "init": {"running_mean": 9.0}})
    arrays = generate(case)
    exp = simulate(case, arrays)
    means = [arrays.batches[i].mean(axis=(0, 2, 3)) for i in range(4)]
    np.testing.assert_allclose(exp.values[(3, "running_mean")].value, np.mean(means, axis=0), rtol=1e-13)
    assert float(exp.values[(3, "num_batches_tracked")].value) == 4
    with pytest.raises(OracleUndefined):
        simulate(case, arrays, Profile(cumulative_average=False))


def test_profiles_change_exactly_what_they_claim():
    steps = [{"op": "forward", "mode": "train"}, {"op": "backward"}]
    case = make_case(steps)
    arrays = generate(case)
    canon = simulate(case, arrays)
    biased = simulate(case, arrays, CANONICAL.with_options("b", running_var_correction="biased"))
    late = simulate(case, arrays, CANONICAL.with_options("l", update_at="backward"))
    n = case.input.reduction_size
    var = arrays.batches[0].var(axis=(0, 2, 3))
    np.testing.assert_allclose(canon.values[(0, "running_var")].value, 0.9 + 0.1 * var * n / (n - 1), rtol=1e-13)
    np.testing.assert_allclose(biased.values[(0, "running_var")].value, 0.9 + 0.1 * var, rtol=1e-13)
    # Output and gradients do not depend on either knob.
    for key in [(0, "output"), (1, "grad_input")]:
        np.testing.assert_array_equal(canon.values[key].value, biased.values[key].value)
        np.testing.assert_array_equal(canon.values[key].value, late.values[key].value)
    # update_at=backward: untouched after the forward, updated after the backward.
    np.testing.assert_array_equal(late.values[(0, "running_var")].value, np.ones(3))
    np.testing.assert_allclose(late.values[(1, "running_var")].value, canon.values[(0, "running_var")].value)


def test_global_stats_mode_uses_and_keeps_running_stats():
    case = make_case([{"op": "forward", "mode": "train_global_stats"}, {"op": "backward"}],
                     {"init": {"running_mean": 1.0, "running_var": 4.0}})
    arrays = generate(case)
    exp = simulate(case, arrays)
    x = arrays.batches[0]
    np.testing.assert_allclose(exp.values[(0, "output")].value, (x - 1.0) / np.sqrt(4.0 + 1e-5), rtol=1e-14)
    np.testing.assert_allclose(exp.values[(1, "grad_input")].value, arrays.grad_outputs[1] / np.sqrt(4.0 + 1e-5))
    np.testing.assert_array_equal(exp.values[(1, "running_mean")].value, np.ones(3))
    assert float(exp.values[(1, "num_batches_tracked")].value) == 0


def test_channels_last_is_the_same_case_seen_another_way():
    nchw = make_case([{"op": "forward", "mode": "train"}], shape=(4, 3, 2, 2))
    nhwc = make_case([{"op": "forward", "mode": "train"}], shape=(4, 2, 2, 3), channel_axis=-1)
    a, b = generate(nchw), generate(nhwc)
    # Same seed, same values: the NHWC batch is the NCHW batch transposed.
    np.testing.assert_array_equal(np.moveaxis(a.batches[0], 1, -1), b.batches[0])
    ya, yb = simulate(nchw, a).values[(0, "output")].value, simulate(nhwc, b).values[(0, "output")].value
    assert yb.shape == (4, 2, 2, 3)
    np.testing.assert_allclose(np.moveaxis(ya, 1, -1), yb, rtol=1e-13)


def test_nan_channel_does_not_leak():
    case = make_case([{"op": "forward", "mode": "train"}], dist={"mean": 0.0, "std": 1.0, "nan_channels": [1]})
    exp = simulate(case, generate(case))
    y = exp.values[(0, "output")].value
    assert np.isnan(y[:, 1]).all() and np.isfinite(y[:, [0, 2]]).all()
    rm = exp.values[(0, "running_mean")].value
    assert np.isnan(rm[1]) and np.isfinite(rm[[0, 2]]).all()


def test_train_statistics_running_makes_train_mode_behave_like_inference():
    steps = [{"op": "forward", "mode": "train"}, {"op": "forward", "mode": "eval"}]
    case = make_case(steps, {"init": {"running_mean": 0.5, "running_var": 2.0}})
    arrays = generate(case)
    frozen = simulate(case, arrays, CANONICAL.with_options("f", train_statistics="running"))
    np.testing.assert_array_equal(frozen.values[(0, "output")].value, frozen.values[(1, "output")].value)
    np.testing.assert_array_equal(frozen.values[(0, "running_mean")].value, np.full(3, 0.5))
    assert float(frozen.values[(0, "num_batches_tracked")].value) == 0


def test_float32_attributes_round_eps_and_momentum():
    case = make_case([{"op": "forward", "mode": "train"}], {"eps": 1e-5, "momentum": 0.1})
    arrays = generate(case)
    a32 = simulate(case, arrays, CANONICAL.with_options("a", eps_dtype="float32", momentum_dtype="float32"))
    canon = simulate(case, arrays)
    x = arrays.batches[0]
    mean, var = oracle.batch_stats(x, 1)
    eps32, m32 = float(np.float32(1e-5)), float(np.float32(0.1))
    np.testing.assert_allclose(a32.values[(0, "output")].value,
                               oracle.normalize(x, mean, var, eps32, np.ones(3), np.zeros(3), 1), rtol=1e-15)
    np.testing.assert_allclose(a32.values[(0, "running_mean")].value, m32 * mean, rtol=1e-15)
    assert not np.array_equal(a32.values[(0, "running_mean")].value, canon.values[(0, "running_mean")].value)


def test_each_backward_reapplies_the_update_in_every_backward():
    # MXNet (src/operator/nn/batch_norm.cc BatchNormBackwardImpl): the EMA runs inside the
    # backward kernel, so two backwards through one training forward apply it twice.
    steps = [{"op": "forward", "mode": "train"}, {"op": "backward"}, {"op": "backward"},
             {"op": "forward", "mode": "train", "batch": 1}]
    case = make_case(steps)
    arrays = generate(case)
    once = simulate(case, arrays, CANONICAL.with_options("b", update_at="backward"))
    each = simulate(case, arrays, CANONICAL.with_options("e", update_at="each_backward"))
    mean = arrays.batches[0].mean(axis=(0, 2, 3))
    np.testing.assert_array_equal(each.values[(0, "running_mean")].value, np.zeros(3))     # forward: untouched
    np.testing.assert_allclose(each.values[(1, "running_mean")].value, 0.1 * mean, rtol=1e-13)
    np.testing.assert_allclose(each.values[(2, "running_mean")].value, 0.9 * 0.1 * mean + 0.1 * mean, rtol=1e-13)
    np.testing.assert_allclose(once.values[(2, "running_mean")].value, 0.1 * mean, rtol=1e-13)
    # A training forward without a backward never updates, whichever backward knob.
    np.testing.assert_array_equal(each.values[(3, "running_mean")].value, each.values[(2, "running_mean")].value)
    for key in [(0, "output"), (1, "grad_input"), (2, "grad_input"), (3, "output")]:
        np.testing.assert_array_equal(once.values[key].value, each.values[key].value)


def test_fixed_gamma_ignores_gamma_and_zeroes_its_gradient():
    steps = [{"op": "forward", "mode": "train"}, {"op": "backward"}]
    case = make_case(steps, {"init": {"weight": [2.0, -1.0, 0.5]}})
    arrays = generate(case)
    fixed = simulate(case, arrays, CANONICAL.with_options("f", fixed_gamma=True))
    unit = simulate(make_case(steps), generate(make_case(steps)))  # same seed, gamma = 1
    np.testing.assert_allclose(fixed.values[(0, "output")].value, unit.values[(0, "output")].value, rtol=1e-15)
    np.testing.assert_allclose(fixed.values[(1, "grad_input")].value, unit.values[(1, "grad_input")].value, rtol=1e-15)
    np.testing.assert_array_equal(fixed.values[(1, "grad_weight")].value, np.zeros(3))
