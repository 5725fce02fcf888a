"""TensorFlow 2.21 (CPU): FusedBatchNormV3 under tf.function(jit_compile=True) computes the batch variance
with the one-pass formula E[x^2] - E[x]^2 (XLA's BatchNormExpander) and no clamp. On a channel with a large
offset and a small spread (mean 1e4, std 1) the float32 cancellation is negative or wildly off: the XLA
output is NaN / inaccurate where the same op run eagerly (CPU kernel, two-pass) is accurate.

Run: python findings/tf_xla_fused_batch_norm_one_pass_variance.py — exit 1 while it reproduces.
"""

import numpy as np
import tensorflow as tf

x = (1e4 + np.random.default_rng(0).standard_normal((8, 4, 4, 3))).astype(np.float32)  # NHWC
scale, offset = tf.ones([3]), tf.zeros([3])


def fused(x):
    return tf.compat.v1.nn.fused_batch_norm(x, scale, offset, epsilon=1e-5, is_training=True)


y_eager, _, var_eager = fused(x)
y_xla, _, var_xla = tf.function(fused, jit_compile=True)(x)
x64 = x.astype(np.float64)
expected = (x64 - x64.mean((0, 1, 2))) / np.sqrt(x64.var((0, 1, 2)) + 1e-5)
err_eager = float(np.nanmax(np.abs(y_eager.numpy() - expected)))
err_xla = float(np.nanmax(np.abs(y_xla.numpy() - expected))) if not np.isnan(y_xla.numpy()).any() else float("nan")
print("eager  max |y - exact| =", err_eager, " running-var input (unbiased):", var_eager.numpy())
print("XLA    max |y - exact| =", err_xla, " running-var input:", var_xla.numpy(),
      " NaN outputs:", int(np.isnan(y_xla.numpy()).sum()))
bad = not (err_xla < 1e-3)
print(f"tensorflow {tf.__version__}: {'REPRODUCES' if bad else 'fixed'}")
raise SystemExit(1 if bad else 0)
