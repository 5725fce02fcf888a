"""tf-keras 2.21.0: BatchNormalization(dtype="float64", fused=False) moves its
running statistics by a float32-rounded factor. _assign_moving_average does
decay = tf.convert_to_tensor(1.0 - momentum)   # a float32 tensor
decay = tf.cast(decay, variable.dtype)          # float64, already rounded
so with momentum 0.9 the update factor is 0.10000000149011612, not 0.1.

Run: python findings/tf_keras_float64_decay_rounded.py
Prints the moving mean after one step against the float64 NumPy EMA.
"""

import numpy as np
import tf_keras

x = np.random.default_rng(0).normal(2.0, 3.0, size=(8, 3))
expected = 0.9 * np.zeros(3) + 0.1 * x.mean(axis=0)  # float64 EMA, new-batch weight 0.1

layer = tf_keras.layers.BatchNormalization(momentum=0.9, fused=False, dtype="float64")
layer(x, training=True)
got = layer.moving_mean.numpy()
print(f"tf_keras {tf_keras.__version__}: moving_mean {got!r}")
print(f"float64 EMA:            {expected!r}")
print(f"relative error {np.abs(got - expected).max() / np.abs(expected).max():.3g} "
      f"(float64 rounding ~1e-16; float32(0.1) / 0.1 - 1 = {float(np.float32(0.1)) / 0.1 - 1:.3g})")
