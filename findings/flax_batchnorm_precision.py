"""flax 0.12.8 / jax 0.10.2 CPU, flax.linen.BatchNorm: three divergences from a
float64 NumPy computation on the SAME (cast) input values.

1. Default use_fast_variance=True: the variance is E[x^2] - E[x]^2 in float32,
   which loses digits when |mean| >> std (catastrophic cancellation; Higham 2002,
   sec. 1.9); use_fast_variance=False (two-pass) does not. jax.nn.standardize had
   the same formula and was switched to two-pass upstream (jax-ml/jax PR #37358).
2. bfloat16 input (dtype=bfloat16, float32 params): grad_input from jax.vjp errs
   by far more than one bfloat16 rounding of the exact gradient.
3. Empty batch (N=0) in training: running mean/var become NaN (0/0 statistics
   averaged in) instead of staying unchanged.

Run: python findings/flax_batchnorm_precision.py
"""

import jax

jax.config.update("jax_enable_x64", True)
import flax.linen as nn  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

rng = np.random.default_rng(0)


def apply(bn, x, stats=None, train=True):
    c = x.shape[1]
    variables = {"params": {"scale": jnp.ones(c, jnp.float32), "bias": jnp.zeros(c, jnp.float32)},
                 "batch_stats": stats or {"mean": jnp.zeros(c, jnp.float32), "var": jnp.ones(c, jnp.float32)}}
    return bn.apply(variables, x, use_running_average=not train, mutable=["batch_stats"])


print("1. variance with a large mean offset (mean 1e3, std 1), float32, N=16x3x3 per channel")
x = (1000.0 + rng.standard_normal((16, 2, 3, 3))).astype(np.float32)
var_true = x.astype(np.float64).var(axis=(0, 2, 3))
for fast in (True, False):
    bn = nn.BatchNorm(axis=1, momentum=0.0, use_fast_variance=fast)  # momentum 0: running var = batch var
    _, upd = apply(bn, jnp.asarray(x))
    err = np.abs(np.asarray(upd["batch_stats"]["var"], np.float64) - var_true) / var_true
    print(f"   use_fast_variance={fast!s:5}: batch variance relative error {err.max():.3g} (float32 two-pass: ~1e-6)")

print("2. bfloat16 backward")
xb = jnp.asarray(rng.standard_normal((4, 3, 5, 5)) * 1.5 - 1.0, jnp.bfloat16)
gb = jnp.asarray(rng.standard_normal((4, 3, 5, 5)), jnp.bfloat16)
bn = nn.BatchNorm(axis=1, dtype=jnp.bfloat16)
_, vjp = jax.vjp(lambda x: apply(bn, x)[0], xb)
dx = np.asarray(vjp(gb)[0], np.float64)
xr, gr = np.asarray(xb, np.float64), np.asarray(gb, np.float64)
m, v = xr.mean(axis=(0, 2, 3), keepdims=True), xr.var(axis=(0, 2, 3), keepdims=True)
xh = (xr - m) / np.sqrt(v + 1e-5)
ref = (gr - gr.mean(axis=(0, 2, 3), keepdims=True) - xh * (gr * xh).mean(axis=(0, 2, 3), keepdims=True)) / np.sqrt(v + 1e-5)
half_ulp = np.maximum(np.abs(ref), 2.0 ** -126) * 2.0 ** -8  # bfloat16: 8 significant bits
print(f"   grad_input max err {(np.abs(dx - ref) / half_ulp).max():.3g} bfloat16 half-ulps of the exact value "
      f"(one correct rounding: <= 1; torch CPU float32 accumulation: ~1)")

print("3. empty batch in training")
bn = nn.BatchNorm(axis=1, momentum=0.9)
_, upd = apply(bn, jnp.zeros((0, 3), jnp.float32),
               {"mean": jnp.asarray([0.5, -1.0, 2.0], jnp.float32), "var": jnp.asarray([4.0, 0.25, 1.0], jnp.float32)})
print(f"   running mean {np.asarray(upd['batch_stats']['mean'])} (expected [0.5 -1. 2.]), "
      f"running var {np.asarray(upd['batch_stats']['var'])} (expected [4. 0.25 1.])")
