"""flax 0.12.8 / jax 0.10.2 CPU, flax.nnx.BatchNorm with float16/bfloat16 input
(dtype = the input dtype, float32 parameters: Flax's mixed-precision idiom):
grad_weight (d scale) and grad_bias (d bias) are computed in half precision.

nnx.BatchNorm.__call__ passes (x, mean, var, scale, bias) through
``promote_dtype(..., dtype=self.dtype)`` (flax/nnx/nn/normalization.py), so the
float32 scale/bias are cast to float16/bfloat16 BEFORE normalising; their
gradients are the cotangents of that cast: half-precision values (sum of
N*H*W terms in half precision, then widened). flax.linen.BatchNorm keeps
scale/bias in param_dtype (linen _normalize) and its parameter gradients are
float32-accurate on the same input. Reference: float64 NumPy on the SAME
(half-rounded) x and dy.

Run: python findings/flax_nnx_half_param_grads.py
"""

import flax.linen as nn  # noqa: E402
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

rng = np.random.default_rng(0)
N, C, H, W = 8, 3, 6, 6
for half in (jnp.float16, jnp.bfloat16):
    x = jnp.asarray(rng.standard_normal((N, C, H, W)) * 1.5 - 1.0, half)
    g = jnp.asarray(rng.standard_normal((N, C, H, W)) + 0.5, half)
    xr, gr = np.asarray(x, np.float64), np.asarray(g, np.float64)
    m, v = xr.mean(axis=(0, 2, 3), keepdims=True), xr.var(axis=(0, 2, 3), keepdims=True)
    xh = (xr - m) / np.sqrt(v + 1e-5)
    ref = {"grad_weight": (gr * xh).sum(axis=(0, 2, 3)), "grad_bias": gr.sum(axis=(0, 2, 3))}

    bn = nnx.BatchNorm(C, axis=1, dtype=half, rngs=nnx.Rngs(0))  # training mode
    _, vjp = nnx.vjp(lambda mod, x: mod(x), bn, x, graph=False)
    mg, _ = vjp(g)
    nnx_g = {"grad_weight": np.asarray(mg.scale[...], np.float64), "grad_bias": np.asarray(mg.bias[...], np.float64)}

    lbn = nn.BatchNorm(axis=1, dtype=half)
    params = {"scale": jnp.ones(C, jnp.float32), "bias": jnp.zeros(C, jnp.float32)}
    stats = {"mean": jnp.zeros(C, jnp.float32), "var": jnp.ones(C, jnp.float32)}
    f = lambda p: lbn.apply({"params": p, "batch_stats": stats}, x, use_running_average=False,
                            mutable=["batch_stats"])[0]
    _, lvjp = jax.vjp(f, params)
    lg = lvjp(g)[0]
    linen_g = {"grad_weight": np.asarray(lg["scale"], np.float64), "grad_bias": np.asarray(lg["bias"], np.float64)}

    print(f"{jnp.dtype(half).name} input, float32 params; dtype of nnx grads: {mg.bias[...].dtype}")
    for k in ref:
        scale = np.abs(ref[k]).max()
        print(f"   {k:11}: max rel err  nnx.BatchNorm {np.abs(nnx_g[k] - ref[k]).max() / scale:.2e}   "
              f"linen.BatchNorm {np.abs(linen_g[k] - ref[k]).max() / scale:.2e}   (float32 accumulation: ~1e-6)")
