"""Keras 3.15.1 (TensorFlow backend): BatchNormalization called with a mask on an EMPTY batch averages
moments of 0 into the moving statistics (mean = 0 / (0 + epsilon), variance likewise): with momentum
0.9, moving_variance 1 -> 0.9 and moving_mean m -> 0.9 m. Nothing was seen, so nothing should change
(PyTorch skips the update; the unmasked Keras call writes NaN instead:
findings/keras_empty_batch_nan_moving_stats.py).

Run: KERAS_BACKEND=tensorflow python findings/keras_masked_empty_batch_zero_moments.py — exit 1 while it reproduces.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402

layer = keras.layers.BatchNormalization(momentum=0.9, moving_mean_initializer=keras.initializers.Constant(0.5))
x = np.zeros((0, 4, 3), np.float32)
layer.build(x.shape)
layer(x, training=True, mask=np.ones((0, 4), bool))
mean, var = layer.moving_mean.numpy(), layer.moving_variance.numpy()
print("moving_mean", mean, "(was 0.5)  moving_variance", var, "(was 1.0)")
bad = np.allclose(mean, 0.45) and np.allclose(var, 0.9)
print(f"keras {keras.__version__}: {'REPRODUCES (zeros averaged in)' if bad else 'changed'}")
raise SystemExit(1 if bad else 0)
