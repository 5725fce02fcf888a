"""Keras 3.15.1 (TensorFlow backend), dtype="float64": BatchNormalization called with an all-True mask
normalises with mean = sum(x) / (m + 1e-7) and variance = sum((x - mean)^2) / (m + 1e-7)
(BatchNormalization._moments, mask branch: `/ (sum_of_weights + backend.epsilon())`), so with every
position kept the result differs from the unmasked call (ops.moments: sum / m) by a relative ~1e-7 / m:
below float32's resolution (fl32(m + 1e-7) = m for m >= 2), ~1e9 float64 ulps. The masked branch was
ported from tf.nn.weighted_moments ("pulls weighted_moments and divide_no_nan logic into
batch_normalization", keras PR #18921), which divides with div_no_nan: exact for m > 0. With a mean large
against the spread the shrunk mean is off by mean * 1e-7 / m in normalised units (here mean 1e4, std 1e-2).

Run: KERAS_BACKEND=tensorflow python findings/keras_masked_moments_epsilon_denominator.py — exit 1 while it reproduces.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402

rng = np.random.default_rng(0)
x = rng.normal(1e4, 1e-2, (2, 3))  # m = 2 values per channel, 3 channels


def run(mask):
    layer = keras.layers.BatchNormalization(dtype="float64", momentum=0.9)
    layer.build(x.shape)
    y = np.asarray(layer(x, training=True, mask=mask))
    return y, layer.moving_mean.numpy()


y_plain, mean_plain = run(None)
y_mask, mean_mask = run(np.ones(x.shape[:-1], bool))
m, eps = x.shape[0], keras.config.epsilon()
exact = 0.1 * x.mean(axis=0)
shrunk = 0.1 * x.sum(axis=0) / (m + eps)
print("moving_mean unmasked - exact:", mean_plain - exact)
print("moving_mean masked   - exact:", mean_mask - exact, " predicted by sum / (m + 1e-7):", shrunk - exact)
print("output max |masked - unmasked| (normalised units):", np.abs(y_mask - y_plain).max())
bad = np.allclose(mean_mask, shrunk, rtol=1e-13, atol=0) and not np.allclose(mean_mask, exact, rtol=1e-12, atol=0)
print(f"keras {keras.__version__}: {'REPRODUCES (count + 1e-7)' if bad else 'changed'}")
raise SystemExit(1 if bad else 0)
