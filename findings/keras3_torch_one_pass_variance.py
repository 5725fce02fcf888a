"""Keras 3.15.1, torch backend: ops.moments computes the variance as
E[x^2] - E[x]^2 (keras/src/backend/torch/nn.py), with no clamp at 0, so
BatchNormalization loses every significant digit when a channel's mean is large
against its spread, and produces NaN when the difference goes negative. The TF
and JAX backends compute a stable variance (keras PR #18795 fixed those two).

Run: KERAS_BACKEND=torch python findings/keras3_torch_one_pass_variance.py
"""

import os

import numpy as np

os.environ.setdefault("KERAS_BACKEND", "torch")
import keras  # noqa: E402

rng = np.random.default_rng(64)
x = rng.normal(0.0, 1.0, size=(32, 2, 4, 4)).astype(np.float32)
x[:, 0] += 10000.0
x[:, 1] -= 10000.0
x64 = x.astype(np.float64)
var64 = x64.var(axis=(0, 2, 3))  # stable two-pass variance in float64 of the same float32 values

layer = keras.layers.BatchNormalization(axis=1, momentum=0.0, epsilon=1e-5)  # moving_variance := batch variance
y = keras.ops.convert_to_numpy(layer(x, training=True))
print(f"keras {keras.__version__} [{keras.backend.backend()}]")
print(f"batch variance, float64 two-pass:   {var64}")
print(f"moving_variance from the layer:     {keras.ops.convert_to_numpy(layer.moving_variance.value)}")
print(f"NaN in the output: {np.isnan(y).sum()} of {y.size} values")
