"""Keras 3 BatchNormalization with a mask on ONE channel: IndexError (known bug keras3-masked-single-channel-squeeze).

``BatchNormalization._moments`` (mask branch, keras/src/layers/normalization/batch_normalization.py) returns
``ops.squeeze(mean), ops.squeeze(variance)`` with no axis, so for num_features == 1 the (1,) statistics become
scalars; the TensorFlow backend's ``batch_normalization`` (channel axis given as a positive index, axis=1 for (N, C))
then indexes ``mean.shape[0]``. The same call
without a mask, or with two channels, runs. Run: KERAS_BACKEND=tensorflow python findings/keras_masked_single_channel_squeeze.py
(keras 3.15.1, tensorflow 2.21.0). Prints one line per call; exit 0 when the bug reproduces.
"""

import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402

x1 = np.random.default_rng(0).normal(size=(4, 1)).astype("float32")
x2 = np.random.default_rng(0).normal(size=(4, 2)).astype("float32")
mask = np.ones((4,), dtype=bool)
print("no mask, C=1:", keras.layers.BatchNormalization(axis=1)(x1, training=True).shape)
print("mask, C=2:", keras.layers.BatchNormalization(axis=1)(x2, training=True, mask=mask).shape)
try:
    keras.layers.BatchNormalization(axis=1)(x1, training=True, mask=mask)
except IndexError as exc:
    print("mask, C=1: IndexError:", str(exc).splitlines()[0])
    sys.exit(0)
print("mask, C=1: ran (the bug no longer reproduces)")
sys.exit(1)
