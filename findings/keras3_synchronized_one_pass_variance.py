"""Keras 3.15.1, TensorFlow backend: BatchNormalization(synchronized=True)
computes its batch statistics with keras/src/backend/tensorflow/nn.py
_compute_moments_sync: variance = max(E[x^2] - E[x]^2, 0) from reduced sums
(the one-pass formula PR #18795 removed from the unsynchronized TF/JAX path).
It runs even on ONE replica with no strategy: tf.distribute.get_replica_context()
returns the default replica context, never None. Two consequences:

1. catastrophic cancellation when a channel's mean is large against its
   spread (here: variance clamped to 0, outputs ~1e3 instead of ~1);
2. an empty batch (N=0): divide_no_nan gives mean = variance = 0, which the
   layer then averages into its moving statistics (pulled toward 0 by the
   momentum) instead of leaving them (or, unsynchronized, writing NaN).

Run: KERAS_BACKEND=tensorflow python findings/keras3_synchronized_one_pass_variance.py
"""

import os

import numpy as np

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
import keras  # noqa: E402

print(f"keras {keras.__version__} [{keras.backend.backend()}]")

# 1. one-pass variance
rng = np.random.default_rng(64)
x = rng.normal(0.0, 1.0, size=(32, 2, 4, 4)).astype(np.float32)
x[:, 0] += 10000.0
x[:, 1] -= 10000.0
x64 = x.astype(np.float64)
mean64, var64 = x64.mean(axis=(0, 2, 3)), x64.var(axis=(0, 2, 3))  # float64 two-pass, same float32 values
y64 = (x64 - mean64[None, :, None, None]) / np.sqrt(var64[None, :, None, None] + 1e-5)
for sync in (False, True):
    layer = keras.layers.BatchNormalization(axis=1, momentum=0.0, epsilon=1e-5, synchronized=sync)
    y = keras.ops.convert_to_numpy(layer(x, training=True)).astype(np.float64)
    print(f"synchronized={sync!s:5}: moving_variance {keras.ops.convert_to_numpy(layer.moving_variance.value)} "
          f"(float64: {var64}); max |output - float64| = {np.abs(y - y64).max():.3g}")

# 2. empty batch
for sync in (False, True):
    layer = keras.layers.BatchNormalization(axis=-1, momentum=0.9, synchronized=sync)
    layer.build((None, 3))
    layer.moving_mean.assign(np.full(3, 5.0, np.float32))
    layer.moving_variance.assign(np.full(3, 4.0, np.float32))
    layer(np.zeros((0, 3), np.float32), training=True)
    print(f"synchronized={sync!s:5}, empty batch: moving_mean {keras.ops.convert_to_numpy(layer.moving_mean.value)}"
          f", moving_variance {keras.ops.convert_to_numpy(layer.moving_variance.value)} "
          f"(no data: expected unchanged [5 5 5], [4 4 4])")
