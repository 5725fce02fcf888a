"""Flax 0.12.8 (linen and nnx, jax 0.10.2): after a training call of BatchNorm
on an EMPTY batch (N=0), the gradient of scale (gamma) is NaN. A sum over no
values is 0 (PyTorch's BatchNorm gives grad_weight 0 there); bias's gradient is 0.

Mechanism: _normalize (flax/linen/normalization.py; the same in
flax/nnx/nn/normalization.py) computes y = (x - mean) * (rsqrt(var + epsilon) * scale)
+ bias, and _compute_stats of an empty batch gives mean = var = 0/0 = NaN, so
d scale = sum(g (x - mean)) * rsqrt(var + epsilon) = 0 * NaN = NaN (with
use_fast_variance True or False, eager or under jax.jit).
Found by `bnconform explore --framework keras.torch --seed 11` (2026-11-30), run in the flax env.

Run: python findings/flax_empty_batch_nan_grad_weight.py
"""

import flax
import jax
import jax.numpy as jnp
import numpy as np
from flax import linen, nnx

x = jnp.zeros((0, 1), jnp.float32)

layer = linen.BatchNorm(use_running_average=False)
variables = layer.init(jax.random.PRNGKey(0), x)


def loss(params):
    y, _ = layer.apply({"params": params, "batch_stats": variables["batch_stats"]}, x, mutable=["batch_stats"])
    return y.sum()


g = jax.grad(loss)(variables["params"])
linen_grads = np.asarray(g["scale"]), np.asarray(g["bias"])

model = nnx.BatchNorm(1, rngs=nnx.Rngs(0))
model.train()
g = nnx.grad(lambda m: m(x).sum())(model)
nnx_grads = np.asarray(g["scale"][...]), np.asarray(g["bias"][...])

for name, (d_scale, d_bias) in {"linen": linen_grads, "nnx": nnx_grads}.items():
    print(f"flax {flax.__version__} {name}.BatchNorm: d scale {d_scale} (expected [0.]), d bias {d_bias} (expected [0.])")
    assert np.isnan(d_scale).all(), f"fixed: {name} d scale is no longer NaN on an empty batch"
