"""Keras 3.15.1 (every backend): after a training call of BatchNormalization on
an EMPTY batch (N=0), the gradient of gamma is NaN. A sum over no values is 0
(PyTorch's BatchNorm gives grad_weight 0 there); beta's gradient is 0.

Mechanism: ops.batch_normalization computes (x - mean) * (rsqrt(var + eps) * gamma)
+ beta (keras/src/backend/torch/nn.py), and the moments of an empty batch are
0/0 = NaN, so d gamma = sum(g (x - mean)) * rsqrt(var + eps) = 0 * NaN = NaN.
Found by `bnconform explore --framework keras.torch --seed 11` (2026-11-30).

Run: KERAS_BACKEND=torch python findings/keras_empty_batch_nan_grad_weight.py
"""

import os

import numpy as np

os.environ.setdefault("KERAS_BACKEND", "torch")
import keras  # noqa: E402

x = np.zeros((0, 1), dtype=np.float32)
layer = keras.layers.BatchNormalization()
layer.build(x.shape)
backend = keras.backend.backend()
if backend == "torch":
    import torch

    y = layer(torch.from_numpy(x), training=True)
    y.sum().backward()
    grads = [layer.gamma.value.grad, layer.beta.value.grad]
elif backend == "tensorflow":
    import tensorflow as tf

    with tf.GradientTape() as tape:
        y = layer(tf.constant(x), training=True)
        loss = tf.reduce_sum(y)
    grads = tape.gradient(loss, [layer.gamma.value, layer.beta.value])
else:
    import jax

    def loss(gamma, beta):
        trainable = [gamma, beta]
        y, _ = layer.stateless_call(trainable, [v.value for v in layer.non_trainable_variables], x, training=True)
        return y.sum()

    grads = jax.grad(loss, argnums=(0, 1))(layer.gamma.value, layer.beta.value)
grads = [keras.ops.convert_to_numpy(g) for g in grads]
print(f"keras {keras.__version__} [{backend}]: d gamma {grads[0]} (expected [0.]), d beta {grads[1]} (expected [0.])")
assert np.isnan(grads[0]).all(), "fixed: d gamma is no longer NaN on an empty batch"
