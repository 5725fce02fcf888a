"""equinox 0.13.8 (jax 0.10.2): ``eqx.nn.BatchNorm(mode="batch")``

1. After t training calls, inference normalises with ``hidden / (1 - momentum^t)``: the zero-debias of
   an average that starts at 0, applied to a running variance that starts at 1. After ONE step with
   momentum 0.9 the variance used is the batch variance + 9 (expected: the batch variance for a
   debiased average, or 0.9 + 0.1 * var for the plain one); with the default 0.99, + 99.
2. A training call on an empty batch makes the running statistics NaN.

Run: python findings/equinox_batchnorm_debiased_unit_variance.py — exit 1 while either reproduces.
"""

import warnings

import equinox as eqx
import jax
import numpy as np

warnings.simplefilter("ignore")
x = np.random.default_rng(0).normal(2.0, 3.0, size=(8, 3, 4, 4)).astype(np.float32)
bn, state = eqx.nn.make_with_state(eqx.nn.BatchNorm)(input_size=3, axis_name="b", mode="batch", momentum=0.9)


def run(x, state, inference):
    return jax.vmap(lambda xi, s: bn(xi, s, inference=inference), axis_name="b", in_axes=(0, None),
                    out_axes=(0, None))(x, state)


_, trained = run(x, state, False)
y, _ = run(x, trained, True)
var_b = x.var(axis=(0, 2, 3))
used = np.array([1.0 / np.polyfit(x[:, c].ravel(), np.asarray(y)[:, c].ravel(), 1)[0] ** 2 - 1e-5 for c in range(3)])
print("batch variance            ", var_b)
print("variance used in inference", used, "(debiased zero-start average: the batch variance)")
inflated = np.allclose(used, var_b + 0.9 / 0.1, rtol=1e-4)

_, after_empty = run(np.zeros((0, 3, 4, 4), np.float32), state, False)
mean, var = after_empty.get(bn.batch_state_index)
print("running stats after an empty batch:", np.asarray(mean), np.asarray(var))
nan = bool(np.isnan(np.asarray(mean)).any())
print(f"equinox {eqx.__version__}: debias of the unit variance {'REPRODUCES' if inflated else 'fixed'}; "
      f"empty batch NaN {'REPRODUCES' if nan else 'fixed'}")
raise SystemExit(1 if inflated or nan else 0)
