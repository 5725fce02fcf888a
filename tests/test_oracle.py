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


def test_running_update_lost_normalises_with_the_batch_but_keeps_the_running_statistics():
    # keras <3.2 on torch under a mixed policy: the update is copied into an autocast temporary.
    steps = [{"op": "forward", "mode": "train"}, {"op": "forward", "mode": "eval"}]
    case = make_case(steps, {"init": {"running_mean": 0.5, "running_var": 2.0}})
    arrays = generate(case)
    lost = simulate(case, arrays, CANONICAL.with_options("l", running_update="lost"))
    canon = simulate(case, arrays, CANONICAL)
    np.testing.assert_array_equal(lost.values[(0, "output")].value, canon.values[(0, "output")].value)
    np.testing.assert_array_equal(lost.values[(0, "running_mean")].value, np.full(3, 0.5))
    np.testing.assert_array_equal(lost.values[(0, "running_var")].value, np.full(3, 2.0))
    assert not np.allclose(canon.values[(0, "running_mean")].value, 0.5)
    # eval then normalises with the untouched running statistics
    x1 = arrays.batches[0]  # the eval step reuses batch 0
    np.testing.assert_allclose(lost.values[(1, "output")].value, (x1 - 0.5) / np.sqrt(2.0 + case.layer.eps))


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


# ---------------------------------------------------------------- precision knobs

U32 = 2.0**-24


def _with_batch(case, x):
    """The case's generated arrays with batch 0 replaced by ``x`` (hand values)."""
    arrays = generate(case)
    arrays.batches[0] = np.asarray(x, dtype=arrays.batches[0].dtype).reshape(case.input.shape)
    return arrays


def _float32_case(steps, shape, layer=None, dist=None):
    return make_case(steps, {"init": {"running_mean": 0.0, "running_var": 1.0, "weight": 1.0, "bias": 0.0},
                             **(layer or {})}, shape=shape, dist=dist, dtype="float32")


def test_one_pass_variance_hand_values():
    # x = [4097, 4099]: float32 squares 16785409 -> 16785408 and 16801801 -> 16801800 (ties to even,
    # spacing 2 above 2^24), sum 33587208 exact, E[x^2] = 16793604 = 4098^2 = E[x]^2: var 0 (exact: 1).
    x = np.array([[4097.0], [4099.0]])
    assert oracle.one_pass_variance(x, 1, "float32", clamped=False) == [0.0]
    assert oracle.one_pass_variance(x, 1, "float64", clamped=False) == [1.0]
    # x = [4098, 4099, 4101]: E[x^2] = fl(50413604 / 3) = 16804534, E[x] = fl(12298 / 3) = 4099 + 683/2048,
    # E[x]^2 = 16804535.11 -> 16804536: var = -2 (exact 14/9); clamped: 0.
    x = np.array([[4098.0], [4099.0], [4101.0]])
    assert oracle.one_pass_variance(x, 1, "float32", clamped=False) == [-2.0]
    assert oracle.one_pass_variance(x, 1, "float32", clamped=True) == [0.0]
    # float64 cancels too: E[x^2]/var ~ 1e7 times u64 ~ 1e-9 relative.
    assert oracle.one_pass_variance(x, 1, "float64", clamped=False) == pytest.approx([14 / 9], rel=1e-8)


def test_one_pass_error_bound_hand_value():
    x = np.array([[4097.0], [4099.0]])
    r = np.sqrt(2.0)
    want = U32 * ((r + 3) * 16793605.0 + 2 * (r + 1) * 4098.0 * 4098.0)
    assert oracle.one_pass_error_bound(x, 1, U32) == pytest.approx([want], rel=1e-14)


def test_one_pass_clamped_output_envelope_hand_values():
    case = _float32_case([{"op": "forward", "mode": "train"}], shape=(2, 1))
    arrays = _with_batch(case, [4097.0, 4099.0])
    eps = case.layer.eps
    prof = CANONICAL.with_options("fast", variance_algorithm="one_pass_clamped")
    e = simulate(case, arrays, prof).values[(0, "output")]
    # Centre: the emulated variance is 0 -> y = (x - mean) / sqrt(eps).
    np.testing.assert_allclose(e.value.ravel(), [-1 / np.sqrt(eps), 1 / np.sqrt(eps)], rtol=1e-12)
    # Model interval [0, B0 + 1] (B0 the bound, 1 the emulation's known error), SAFETY interval
    # [0, 4 B0 + 1]: ds = max(4 (s(0) - s(B0 + 1)), s(0) - s(4 B0 + 1)) = 4 (s(0) - s(B0 + 1)),
    # times |x - mean| = 1 plus the mean's model error u (sqrt(2) + 1) E|x|.
    b0 = oracle.one_pass_error_bound(np.array([[4097.0], [4099.0]]), 1, U32)[0]
    s = lambda v: 1 / np.sqrt(v + eps)  # noqa: E731
    mean_err = U32 * (np.sqrt(2) + 1) * 4098.0
    np.testing.assert_allclose(e.spread.ravel(), (1 + mean_err) * 4 * (s(0) - s(b0 + 1)), rtol=1e-12)
    # The two-pass (exact) answer lies inside the envelope.
    exact = np.array([-1.0, 1.0]) / np.sqrt(1 + eps)
    assert np.all(np.abs(exact - e.value.ravel()) <= e.spread.ravel())
    # The running variance carries the interval (canonical unbiased update, m = 2: factor 2).
    rv = simulate(case, arrays, prof).values[(0, "running_var")]
    f, corr = case.layer.momentum, 2.0
    assert rv.value == pytest.approx([(1 - f) * 1.0 + f * corr * 0.0])
    # Lower offset clamped at 0 (the variance cannot go below 0), upper f * corr * (4 B0 + 1).
    assert rv.spread == pytest.approx([max(4 * f * corr * (b0 + 1), f * corr * (4 * b0 + 1))])


def test_unclamped_one_pass_is_unbounded_where_the_variance_can_be_negative():
    case = _float32_case([{"op": "forward", "mode": "train"}, {"op": "backward"}], shape=(3, 1))
    arrays = _with_batch(case, [4098.0, 4099.0, 4101.0])
    raw = simulate(case, arrays, CANONICAL.with_options("torch", variance_algorithm="one_pass"))
    y = raw.values[(0, "output")]
    assert np.isnan(y.value).all()            # the emulated variance is -2: sqrt(-2 + eps) is NaN
    assert np.isinf(y.spread).all() and np.isinf(raw.values[(1, "grad_input")].spread).all()
    clamped = simulate(case, arrays, CANONICAL.with_options("flax", variance_algorithm="one_pass_clamped"))
    assert np.isfinite(clamped.values[(0, "output")].spread).all()
    assert np.isfinite(clamped.values[(1, "grad_input")].spread).all()


@pytest.mark.parametrize("algorithm", ["one_pass", "one_pass_clamped"])
def test_variance_envelope_contains_every_variance_of_the_safety_interval(algorithm):
    # Brute force: evaluate output, grad_input, grad_weight at variances across the SAFETY interval
    # (and, clamped, with the variance's gradient path cut at 0): all within value +- spread.
    steps = [{"op": "forward", "mode": "train"}, {"op": "backward"}]
    case = _float32_case(steps, shape=(8, 2, 3), dist={"mean": [40.0, -300.0], "std": [1.0, 0.5]})
    arrays = generate(case)
    prof = CANONICAL.with_options("p", variance_algorithm=algorithm)
    ex = simulate(case, arrays, prof).values
    x = arrays.batches[0].astype(np.float64)
    g = arrays.grad_outputs[1].astype(np.float64)
    mean, exact = oracle.batch_stats(x, 1)
    v = oracle.one_pass_variance(x, 1, "float32", algorithm == "one_pass_clamped")
    width = 4 * oracle.one_pass_error_bound(x, 1, U32) + np.abs(v - exact)
    eps, w = case.layer.eps, np.ones(2)
    m = case.input.reduction_size
    mean_err = U32 * (np.sqrt(m) + 1) * np.abs(x).mean(axis=(0, 2))  # the mean's model error
    for t, sign in [(t, sign) for t in np.linspace(-1.0, 1.0, 41) for sign in (-1, 0, 1)]:
        var = v + t * width
        if algorithm == "one_pass_clamped":
            var = np.maximum(var, 0.0)
        if np.any(var + eps <= 0):
            continue
        mu = mean + sign * mean_err
        y = oracle.normalize(x, mu, var, eps, w, np.zeros(2), 1)
        dx, dw, _ = oracle.backward_batch_stats(g, x, mu, var, eps, w, 1)
        # A mean error's share at the centre's s = 1/sqrt(v + eps) belongs to the base tolerance.
        s_c, xm = 1 / np.sqrt(v + eps), x - mean[None, :, None]
        d, gbar = mean_err[None, :, None], np.abs(g.mean(axis=(0, 2), keepdims=True))
        dC = d * (np.abs((g * xm).mean(axis=(0, 2), keepdims=True)) + np.abs(xm) * gbar) + d * d * gbar
        share = {"output": (mean_err * s_c)[None, :, None], "grad_input": dC * (s_c**3)[None, :, None],
                 "grad_weight": np.abs(g.sum(axis=(0, 2))) * mean_err * s_c}
        cands = [("output", y), ("grad_input", dx), ("grad_weight", dw)]
        if algorithm == "one_pass_clamped":  # at 0 the clamp cuts the variance's gradient path
            cut = np.where(var[None, :, None] == 0, (g - g.mean(axis=(0, 2), keepdims=True)) / np.sqrt(eps), dx)
            cands.append(("grad_input", cut))
        for name, val in cands:
            e = ex[(0 if name == "output" else 1, name)]
            assert np.all(np.abs(val - e.value) <= (e.spread + abs(sign) * share[name]) * (1 + 1e-9)), (name, t, sign)
    clamps = (v - width <= 0)
    assert algorithm == "one_pass" or clamps.any()  # the clamped branch is exercised


def test_canonical_and_semantic_profiles_carry_no_spread():
    steps = [{"op": "forward", "mode": "train"}, {"op": "backward"}, {"op": "sgd_step", "lr": 0.1},
             {"op": "forward", "mode": "eval"}]
    case = make_case(steps)
    for prof in (CANONICAL, CANONICAL.with_options("b", running_var_correction="biased", eps_dtype="float32",
                                                   empty_batch_update="nan")):
        assert prof.models_precision is False
        assert all(e.spread is None for e in simulate(case, generate(case), prof).values.values())


_TRAIN_BWD_SGD_EVAL = [{"op": "forward", "mode": "train"}, {"op": "backward"}, {"op": "sgd_step", "lr": 0.1},
                       {"op": "forward", "mode": "eval", "batch": 1}]


@pytest.mark.parametrize("knob, value, dtype, shape", [
    ("variance_algorithm", "one_pass", "float32", (4, 3, 2, 2)),
    ("variance_algorithm", "one_pass_clamped", "float32", (4, 3, 2, 2)),
    ("compute_dtype", "float32", "float64", (4, 3, 2, 2)),
    ("compute_dtype", "input", "float16", (4, 3, 2, 2)),
    ("accumulation_dtype", {"grad_weight": "input"}, "float16", (4, 3, 2, 2)),
    ("accumulation_dtype", {"grad_input": "bfloat16"}, "float32", (4, 3, 2, 2)),
    ("accumulation_dtype", {"running_var": "input"}, "float16", (4, 3, 2, 2)),
    ("empty_batch_update", "nan", "float32", (0, 3)),
    ("empty_batch_update", "zero", "float32", (0, 3)),
    ("sgd_lr_dtype", "float32", "float64", (4, 3, 2, 2)),
    ("summation", "recursive", "float32", (4, 3, 2, 2)),
    ("ema_form", "subtract", "float32", (4, 3, 2, 2)),
    ("moments_count_offset", 1e-7, "float64", (4, 3, 2, 2)),
])
def test_a_precision_or_empty_batch_knob_is_never_ignored(knob, value, dtype, shape):
    steps = _TRAIN_BWD_SGD_EVAL if shape[0] else [{"op": "forward", "mode": "train"}]
    case = make_case(steps, {"init": {"running_mean": 1.0, "running_var": 2.0}}, shape=shape, dtype=dtype)
    arrays = generate(case)
    base, other = simulate(case, arrays), simulate(case, arrays, CANONICAL.with_options("k", **{knob: value}))
    changed = []
    for key, e in base.values.items():
        o = other.values[key]
        same_value = np.array_equal(e.value, o.value, equal_nan=True)
        if not same_value or (o.spread is not None and np.any(o.spread > 0)):
            changed.append(key[1])
    assert changed, f"{knob}={value!r} changed nothing"


def test_knobs_that_are_not_narrower_change_nothing():
    # float32 compute on a float32 case, float32 accumulation of a float32 gradient: no envelope.
    case = make_case(_TRAIN_BWD_SGD_EVAL, dtype="float32")
    for opts in ({"compute_dtype": "float32"}, {"accumulation_dtype": {"grad_weight": "input"}}):
        ex = simulate(case, generate(case), CANONICAL.with_options("k", **opts))
        assert all(not np.any(e.spread) for e in ex.values.values()), opts


def test_empty_batch_update_hand_values():
    case = make_case([{"op": "forward", "mode": "train"}],
                     {"momentum": 0.1, "init": {"running_mean": 1.0, "running_var": 2.0}}, shape=(0, 3))
    arrays = generate(case)
    get = lambda mode: simulate(case, arrays, CANONICAL.with_options(mode, empty_batch_update=mode)).values  # noqa: E731
    skip, nan, zero = get("skip"), get("nan"), get("zero")
    assert skip[(0, "running_mean")].value.tolist() == [1.0] * 3 and skip[(0, "running_var")].value.tolist() == [2.0] * 3
    assert np.isnan(nan[(0, "running_mean")].value).all() and np.isnan(nan[(0, "running_var")].value).all()
    np.testing.assert_allclose(zero[(0, "running_mean")].value, 0.9)
    np.testing.assert_allclose(zero[(0, "running_var")].value, 1.8)
    for ex in (skip, nan, zero):
        assert ex[(0, "num_batches_tracked")].value == 1.0


def test_compute_dtype_spread_is_the_float32_tolerance():
    case = make_case([{"op": "forward", "mode": "train"}, {"op": "backward"}], dtype="float64")
    ex = simulate(case, generate(case), CANONICAL.with_options("k", compute_dtype="float32")).values
    m = case.input.reduction_size
    for key in ((0, "output"), (1, "grad_input"), (1, "grad_weight"), (1, "grad_bias")):
        e = ex[key]
        np.testing.assert_allclose(e.spread, 4 * U32 * (np.sqrt(m) * e.magnitude + np.abs(e.value)), rtol=1e-12)


def test_accumulation_dtype_passes_through_sgd_to_the_parameter():
    steps = [{"op": "forward", "mode": "train"}, {"op": "backward"}, {"op": "sgd_step", "lr": 0.5}]
    case = make_case(steps, dtype="float16")
    ex = simulate(case, generate(case),
                  CANONICAL.with_options("k", accumulation_dtype={"grad_weight": "input"})).values
    m, u16 = case.input.reduction_size, 2.0**-11
    gw = ex[(1, "grad_weight")]
    np.testing.assert_allclose(gw.spread, 4 * u16 * (np.sqrt(m) * gw.magnitude + np.abs(gw.value)), rtol=1e-12)
    np.testing.assert_allclose(ex[(2, "weight")].spread, 0.5 * gw.spread, rtol=1e-12)
    assert not np.any(ex[(1, "grad_bias")].spread) and not np.any(ex[(1, "grad_input")].spread)


@pytest.mark.parametrize("options, field", [
    ({"variance_algorithm": "three_pass"}, "variance_algorithm"),
    ({"empty_batch_update": "drop"}, "empty_batch_update"),
    ({"compute_dtype": "float8"}, "compute_dtype"),
    ({"ema_form": "assign_sub"}, "ema_form"),
    ({"accumulation_dtype": {"gradient": "input"}}, "accumulation_dtype"),
    ({"accumulation_dtype": {"grad_input": "half"}}, "accumulation_dtype"),
    ({"moments_count_offset": "1e-7"}, "moments_count_offset"),
    ({"moments_count_offset": -1e-7}, "moments_count_offset"),
    ({"moments_count_offset": float("nan")}, "moments_count_offset"),
    ({"moments_count_offset": True}, "moments_count_offset"),
])
def test_bad_knob_values_are_rejected_by_name(options, field):
    with pytest.raises(ValueError, match=field):
        CANONICAL.with_options("bad", **options)


def test_mapping_knobs_merge_key_by_key():
    merged = oracle.merge_options([{"accumulation_dtype": {"grad_input": "input"}, "eps_dtype": "float32"},
                                   {"accumulation_dtype": {"grad_weight": "input"}}])
    assert merged == {"accumulation_dtype": {"grad_input": "input", "grad_weight": "input"}, "eps_dtype": "float32"}
    assert CANONICAL.with_options("m", **merged).options()["accumulation_dtype"] == merged["accumulation_dtype"]
    with pytest.raises(ValueError, match="grad_input"):
        oracle.merge_options([{"accumulation_dtype": {"grad_input": "float16"}},
                              {"accumulation_dtype": {"grad_input": "bfloat16"}}])


def test_sgd_lr_dtype_float32_hand_value():
    steps = [{"op": "forward", "mode": "train"}, {"op": "backward"}, {"op": "sgd_step", "lr": 0.1}]
    case = make_case(steps)
    arrays = generate(case)
    base, f32 = simulate(case, arrays), simulate(case, arrays, CANONICAL.with_options("lr", sgd_lr_dtype="float32"))
    g, w0 = base.values[(1, "grad_weight")].value, np.asarray(arrays.init["weight"], np.float64)
    assert np.array_equal(f32.values[(2, "weight")].value, w0 - float(np.float32(0.1)) * g)
    assert np.array_equal(base.values[(2, "weight")].value, w0 - 0.1 * g)


# ---- ema_form: subtract (TensorFlow's assign_moving_average: running -= (running - batch) * (1 - decay))

_SUBTRACT = CANONICAL.with_options("tf", running_var_correction="biased", ema_form="subtract")


@pytest.mark.parametrize("dtype, u", [("float64", 2.0**-53), ("float32", U32), ("float16", U32)])
def test_ema_subtract_envelope_hand_values_accumulate_through_the_average(dtype, u):
    # Per update SAFETY * 3 u f |running - batch| (u of the running statistics' dtype: float32 for
    # half inputs), the earlier updates' envelope carried as (1 - f) spread; the values are the
    # exact float64 average, unchanged.
    f, k = 0.7, 4
    steps = [{"op": "forward", "mode": "train", "batch": i} for i in range(k)] + [{"op": "forward", "mode": "eval"}]
    case = make_case(steps, {"momentum": f, "init": {"running_mean": 0.5, "running_var": 2.0}}, dtype=dtype)
    arrays = generate(case)
    biased = simulate(case, arrays, CANONICAL.with_options("b", running_var_correction="biased")).values
    ex = simulate(case, arrays, _SUBTRACT).values
    rm, rv = np.full(3, 0.5), np.full(3, 2.0)
    sp_m, sp_v = np.zeros(3), np.zeros(3)
    for i in range(k):
        x = np.asarray(arrays.batches[i], dtype=np.float64)
        mean, var = x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3))
        sp_m = (1 - f) * sp_m + 4 * 3 * u * f * np.abs(rm - mean)
        sp_v = (1 - f) * sp_v + 4 * 3 * u * f * np.abs(rv - var)
        rm, rv = (1 - f) * rm + f * mean, (1 - f) * rv + f * var
        for name, want in (("running_mean", sp_m), ("running_var", sp_v)):
            np.testing.assert_allclose(ex[(i, name)].spread, want, rtol=1e-12, err_msg=f"{name} step {i}")
            assert np.array_equal(ex[(i, name)].value, biased[(i, name)].value)
        assert not np.any(ex[(i, "output")].spread)  # a batch-statistics forward is not touched
    assert np.array_equal(ex[(k, "running_var")].spread, ex[(k - 1, "running_var")].spread)  # eval updates nothing
    assert np.all(ex[(k, "output")].spread > 0)  # the eval forward normalises with the widened running_var


def _tf_subtract_update(running, batch, momentum):
    """TensorFlow's form in float32, written from its source, not from the oracle:
    ``running -= (running - batch) * c``, ``c = 1.0 - decay`` rounded to float32
    (``assign_moving_average``; ``adapters/tf_nn.py`` writes ``1.0 - (1.0 - momentum)``)."""
    c = np.float32(1.0 - (1.0 - momentum))
    running, batch = np.float32(running), np.float32(batch)
    return running - (running - batch) * c


def test_ema_subtract_model_bound_covers_the_float32_form_and_is_nearly_attained():
    # One value per channel (m = 1): the batch mean is the value itself, exact in float32, so
    # running_mean isolates the update's own roundings. Running means ~1, values from 1e-8 to 1
    # (the explored cases: a ~1e-7 batch statistic replacing a running statistic of 1). The model
    # bound (the envelope without SAFETY) plus the storage rounding u |new| the tolerance charges
    # covers every channel at every momentum; half the counted roundings would not (somewhere the
    # error beyond the storage rounding is more than half the bound: c, the difference and the
    # product all round), and near f = 1 the canonical interpolation's magnitude misses the error
    # by orders of magnitude.
    c, worst, missed = 20000, 0.0, {}
    rng = np.random.default_rng(11)
    for momentum in (1.0, 0.99, 0.9, 0.7, 0.5, 0.3, 0.1):
        case = make_case([{"op": "forward", "mode": "train"}], {"momentum": momentum}, shape=(1, c), dtype="float32")
        arrays = generate(case)
        arrays.init["running_mean"] = rng.uniform(0.5, 2.0, c).astype(np.float32)
        arrays.batches[0] = (10.0 ** rng.uniform(-8, 0, (1, c))).astype(np.float32)
        e = simulate(case, arrays, _SUBTRACT).values[(0, "running_mean")]
        r, x = arrays.init["running_mean"].astype(np.float64), arrays.batches[0][0].astype(np.float64)
        np.testing.assert_allclose(e.value, (1 - momentum) * r + momentum * x, rtol=1e-15)
        err = np.abs(_tf_subtract_update(arrays.init["running_mean"], arrays.batches[0][0], momentum) - e.value)
        model = e.spread / oracle.SAFETY
        beyond_store = err - U32 * np.abs(e.value)
        assert np.all(beyond_store <= model * (1 + 1e-6)), momentum  # 1e-6: the O(u^2) of a first-order bound
        worst = max(worst, float(np.max(beyond_store / model)))
        missed[momentum] = float(np.max(err / (U32 * ((1 - momentum) * r + momentum * x + np.abs(e.value)))))
    assert worst > 1 / 2, worst
    assert missed[1.0] > 1e5 and missed[0.99] > 10, missed


# ---------------------------------------------------------------- moments_count_offset (Keras 3 masked moments)

KERAS_EPSILON = 1e-7  # keras.backend.epsilon()


def _keras_masked_bn(x, gamma, beta, moving_mean, moving_var, eps, keras_momentum, offset=KERAS_EPSILON):
    """Keras 3 BatchNormalization.call(training=True, mask=all True) transcribed into NumPy, channels
    last, written from keras/src/layers/normalization/batch_normalization.py (_moments, mask branch;
    call; ops.batch_normalization), not from the oracle. Complex-safe (no abs, no comparisons), so
    complex-step differentiation gives its derivatives to machine precision."""
    axes = tuple(range(x.ndim - 1))
    mask = np.ones(x.shape[:-1], dtype=bool)
    mask_b = np.broadcast_to(np.expand_dims(mask, -1), x.shape)
    masked_input_sum = np.sum(np.where(mask_b, x, 0), axis=axes, keepdims=True)
    sum_of_weights = np.sum(mask_b.astype(np.float64), axis=axes, keepdims=True)
    mean = masked_input_sum / (sum_of_weights + offset)
    difference = np.where(mask_b, x - mean, 0)
    variance = np.sum(difference * difference, axis=axes, keepdims=True) / (sum_of_weights + offset)
    mean, variance = mean.reshape(-1), variance.reshape(-1)
    new_mean = moving_mean * keras_momentum + mean * (1.0 - keras_momentum)
    new_var = moving_var * keras_momentum + variance * (1.0 - keras_momentum)
    y = (x - mean) * (1.0 / np.sqrt(variance + eps) * gamma) + beta
    return y, new_mean, new_var


def _complex_step(f, a, h=1e-30):
    """d sum(f(a)) / d a by complex-step differentiation (exact to rounding: no subtraction)."""
    grad = np.zeros(a.shape)
    for idx in np.ndindex(a.shape):
        z = a.astype(np.complex128)
        z[idx] += 1j * h
        grad[idx] = np.sum(f(z)).imag / h
    return grad


def _keras_case(shape):
    return make_case([{"op": "forward", "mode": "train"}, {"op": "backward"}],
                     {"momentum": 0.1, "eps": 1e-3, "init": {"running_mean": 0.5, "running_var": 2.0}},
                     shape=shape, channel_axis=len(shape) - 1, dist={"mean": 3.0, "std": 0.5})


def _keras_reference(case, arrays, offset):
    x = np.asarray(arrays.batches[0], np.float64)
    g = np.asarray(arrays.grad_outputs[1], np.float64)
    w, b = (np.asarray(arrays.init[k], np.float64) for k in ("weight", "bias"))
    rm, rv = (np.asarray(arrays.init[k], np.float64) for k in ("running_mean", "running_var"))
    L = case.layer
    run = lambda xx, ww: _keras_masked_bn(xx, ww, b, rm, rv, L.eps, 1.0 - L.momentum, offset)  # noqa: E731
    y, new_mean, new_var = run(x, w)
    return {(0, "output"): y, (0, "running_mean"): new_mean, (0, "running_var"): new_var,
            (1, "grad_input"): _complex_step(lambda xx: g * run(xx, w)[0], x),
            (1, "grad_weight"): _complex_step(lambda ww: g * run(x, ww)[0], w),
            (1, "grad_bias"): g.sum(axis=tuple(range(x.ndim - 1)))}


def _keras_profile(offset):
    return CANONICAL.with_options("k", running_var_correction="biased", moments_count_offset=offset)


@pytest.mark.parametrize("shape", [(6, 3), (2, 3, 4)])
@pytest.mark.parametrize("offset", [KERAS_EPSILON, 0.5])
def test_moments_count_offset_reproduces_keras_masked_moments(shape, offset):
    case = _keras_case(shape)
    arrays = generate(case)
    ref = _keras_reference(case, arrays, offset)
    ex = simulate(case, arrays, _keras_profile(offset)).values
    for key, want in ref.items():
        np.testing.assert_allclose(ex[key].value, want, rtol=1e-12, atol=1e-14, err_msg=str(key))


@pytest.mark.parametrize("shape", [(6, 3), (2, 3, 4)])
def test_without_moments_count_offset_the_keras_masked_moments_differ_by_epsilon_over_m(shape):
    case = _keras_case(shape)
    arrays = generate(case)
    ref = _keras_reference(case, arrays, KERAS_EPSILON)
    ex = simulate(case, arrays, _keras_profile(0.0)).values
    m = case.input.reduction_size
    for key, want in ref.items():
        if key[1] == "grad_bias":
            continue  # sum(g): no statistics in it
        rel = np.max(np.abs(ex[key].value - want)) / np.max(np.abs(want))
        assert 1e-3 * KERAS_EPSILON / m < rel < 1e2 * KERAS_EPSILON / m, (key, rel)
    # The batch mean itself: exactly the relative bias 1e-7 / (m + 1e-7) (running_mean = 0.9 * 0.5 + 0.1 mean).
    mean_k = (ref[(0, "running_mean")] - 0.45) / 0.1
    mean_0 = (ex[(0, "running_mean")].value - 0.45) / 0.1
    np.testing.assert_allclose((mean_0 - mean_k) / mean_0, KERAS_EPSILON / (m + KERAS_EPSILON), rtol=1e-6)


def test_moments_count_offset_zero_is_the_canonical_oracle_bit_for_bit():
    steps = _TRAIN_BWD_SGD_EVAL + [{"op": "forward", "mode": "train", "batch": 1}, {"op": "backward"}]
    case = make_case(steps, {"init": {"running_mean": 1.0, "running_var": 2.0}})
    arrays = generate(case)
    zero = CANONICAL.with_options("z", moments_count_offset=0)
    assert zero.options() == {} and zero.moments_count_offset == 0.0
    canon, same = simulate(case, arrays), simulate(case, arrays, zero)
    assert canon.values.keys() == same.values.keys()
    for key, e in canon.values.items():
        assert np.array_equal(e.value, same.values[key].value, equal_nan=True), key
    # ... and the canonical values are Alg. 1's primitives, bit for bit.
    x, g = arrays.batches[0], arrays.grad_outputs[1]
    mean, var = oracle.batch_stats(x, 1)
    w, b = arrays.init["weight"], arrays.init["bias"]
    assert np.array_equal(canon.values[(0, "output")].value, oracle.normalize(x, mean, var, 1e-5, w, b, 1))
    dx, dw, _ = oracle.backward_batch_stats(g, x, mean, var, 1e-5, w, 1)
    assert np.array_equal(canon.values[(1, "grad_input")].value, dx)
    assert np.array_equal(canon.values[(1, "grad_weight")].value, dw)


def test_moments_count_offset_leaves_an_empty_batch_to_empty_batch_update():
    case = make_case([{"op": "forward", "mode": "train"}, {"op": "backward"}],
                     {"momentum": 0.1, "init": {"running_mean": 1.0, "running_var": 2.0}}, shape=(0, 3))
    arrays = generate(case)
    for mode in ("skip", "nan", "zero"):
        plain = simulate(case, arrays, CANONICAL.with_options(mode, empty_batch_update=mode)).values
        off = simulate(case, arrays, CANONICAL.with_options(mode, empty_batch_update=mode,
                                                            moments_count_offset=KERAS_EPSILON)).values
        for key, e in plain.items():
            assert np.array_equal(e.value, off[key].value, equal_nan=True), (mode, key)
    # Keras' masked empty batch, 0 / (0 + 1e-7) = 0 averaged in, is "zero": running stats shrink by the decay.
    np.testing.assert_allclose(off[(0, "running_var")].value, 1.8)
    assert off[(1, "grad_weight")].value.tolist() == [0.0] * 3


@pytest.mark.parametrize("options, replicas", [({"variance_algorithm": "one_pass"}, None),
                                               ({"variance_algorithm": "one_pass_clamped"}, None), ({}, [2, 2])])
def test_moments_count_offset_with_a_one_pass_variance_or_replicas_is_not_modelled(options, replicas):
    case = make_case([{"op": "forward", "mode": "train"}]).model_copy(update={"replicas": replicas})
    with pytest.raises(ValueError, match="moments_count_offset"):
        simulate(case, generate(case), CANONICAL.with_options("k", moments_count_offset=1e-7, **options))
