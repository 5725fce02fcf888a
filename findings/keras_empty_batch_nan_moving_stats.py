"""Keras 3.15.1 (any backend) and tf-keras 2.21.0: a training call of
BatchNormalization on an EMPTY batch (N=0) writes NaN into moving_mean and
moving_variance. An empty batch carries no statistics; the expected running
statistics are the unchanged initial ones (PyTorch leaves them unchanged).

Run: KERAS_BACKEND=tensorflow python findings/keras_empty_batch_nan_moving_stats.py
(also with jax / torch; the tf-keras part runs when tf_keras is importable).
"""

import os

import numpy as np

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
x = np.zeros((0, 3), dtype=np.float32)
expected_mean, expected_var = np.zeros(3), np.ones(3)  # initial statistics, untouched (float64 reference)

import keras  # noqa: E402

layer = keras.layers.BatchNormalization(momentum=0.9)
layer(x, training=True)
print(f"keras {keras.__version__} [{keras.backend.backend()}]: moving_mean {keras.ops.convert_to_numpy(layer.moving_mean.value)}"
      f" moving_variance {keras.ops.convert_to_numpy(layer.moving_variance.value)}; expected {expected_mean} {expected_var}")

try:
    import tf_keras
except ImportError:
    tf_keras = None
if tf_keras is not None:
    layer = tf_keras.layers.BatchNormalization(momentum=0.9)
    layer(x, training=True)
    print(f"tf_keras {tf_keras.__version__}: moving_mean {layer.moving_mean.numpy()} "
          f"moving_variance {layer.moving_variance.numpy()}; expected {expected_mean} {expected_var}")
