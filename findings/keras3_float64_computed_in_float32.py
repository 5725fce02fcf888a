"""Keras 3.15.1 on the JAX and torch backends: BatchNormalization(dtype="float64")
computes in float32 and casts the result back to float64.
BatchNormalization.call uses compute_dtype = backend.result_type(inputs.dtype,
"float32"), and keras/src/backend/common/dtypes.py maps float64 to float32 on
every backend but TensorFlow (upstream: keras-team/keras#23704).

Run: KERAS_BACKEND=torch python findings/keras3_float64_computed_in_float32.py
     KERAS_BACKEND=jax   python findings/keras3_float64_computed_in_float32.py
Prints the error of the float64 layer against a float64 NumPy computation
(~1e-7 = float32 rounding; float64 would give ~1e-15), and the dtype result_type picks.
"""

import os

import numpy as np

os.environ.setdefault("KERAS_BACKEND", "torch")
import keras  # noqa: E402
from keras.src import backend  # noqa: E402

if keras.backend.backend() == "jax":
    import jax

    jax.config.update("jax_enable_x64", True)

x = np.random.default_rng(0).normal(0.5, 3.0, size=(4, 3, 3, 3))
mean, var = x.mean(axis=(0, 2, 3), keepdims=True), x.var(axis=(0, 2, 3), keepdims=True)
reference = (x - mean) / np.sqrt(var + 1e-5)

layer = keras.layers.BatchNormalization(axis=1, epsilon=1e-5, dtype="float64")
y = keras.ops.convert_to_numpy(layer(keras.ops.convert_to_tensor(x, dtype="float64"), training=True))
print(f"keras {keras.__version__} [{keras.backend.backend()}]: result_type('float64', 'float32') = "
      f"{backend.result_type('float64', 'float32')}")
print(f"output dtype {y.dtype}, max abs error vs float64 NumPy: {np.abs(y - reference).max():.3g} "
      f"(float64 arithmetic gives ~1e-15)")
