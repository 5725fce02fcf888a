"""TensorFlow 2.21 (CPU): tf.nn.moments + tf.nn.batch_normalization on an EMPTY
batch (N=0): the gradient of scale (gamma) is NaN. A sum over no values is 0
(PyTorch's BatchNorm gives grad_weight 0 there); offset's (beta's) gradient is 0.

Mechanism: tf.nn.moments of an empty batch is 0/0 = NaN (reduce_mean over no
values), and tf.nn.batch_normalization (tensorflow/python/ops/nn_impl.py) computes
inv = rsqrt(variance + variance_epsilon) * scale and x * inv + (offset - mean * inv),
so d scale = (sum(g x) - mean sum(g)) * rsqrt(variance + variance_epsilon)
= (0 - NaN * 0) * NaN = NaN; eager, under tf.function and with jit_compile=True alike.
Found by `bnconform explore --framework keras.torch --seed 11` (2026-11-30), run in the tf env.

Run: python findings/tf_nn_empty_batch_nan_grad_weight.py
"""

import numpy as np
import tensorflow as tf

x = tf.zeros((0, 1), tf.float32)
scale, offset = tf.Variable([1.0]), tf.Variable([0.0])


def grads():
    with tf.GradientTape() as tape:
        mean, var = tf.nn.moments(x, [0])
        y = tf.nn.batch_normalization(x, mean, var, offset, scale, 1e-5)
        loss = tf.reduce_sum(y)
    return tape.gradient(loss, [scale, offset])


for name, fn in {"eager": grads, "tf.function": tf.function(grads),
                 "tf.function(jit_compile=True)": tf.function(grads, jit_compile=True)}.items():
    d_scale, d_offset = (g.numpy() for g in fn())
    print(f"tensorflow {tf.__version__} [{name}]: d scale {d_scale} (expected [0.]), d offset {d_offset} (expected [0.])")
    assert np.isnan(d_scale).all(), f"fixed [{name}]: d scale is no longer NaN on an empty batch"
