"""Keras 3.0.x-3.1.x: under a mixed_float16 (mixed_bfloat16) policy,
BatchNormalization's float32 variables are AUTOCAST to the half compute dtype inside
call(). moving_mean and moving_variance are stored rounded to float16 at every
update (KerasVariable.assign converts the value to self.dtype, which the autocast
scope reports as float16), gamma and beta are read as float16 (a gamma of 1e5
becomes inf: the output is NaN where tf.nn.batch_normalization computes inf - inf).
On the TORCH backend the update is lost altogether: Variable._direct_assign is
self.value.copy_(value) and self.value is the autocast float16 copy, so the
moving statistics never move (keras/src/backend/torch/core.py).
Keras 3.2.0 creates the four variables with autocast=False; from then on the
moving statistics keep float32 precision.

Sources: keras 3.1.1 keras/src/backend/common/variables.py (KerasVariable.dtype,
assign, value -> _maybe_autocast), keras/src/layers/normalization/batch_normalization.py
(build: add_weight without autocast=False; 3.2.1 passes it).
Found by the bnconform release sweep (issue 17), shards keras-tf-3.0.5 / -3.1.1.

Run (affected):  pip install keras==3.1.1 tensorflow-cpu==2.16.2 "numpy<2"
                 KERAS_BACKEND=tensorflow python findings/keras3_mixed_precision_autocast_variables.py
                 (torch backend: pip install keras==3.1.1 torch "numpy<2"; KERAS_BACKEND=torch ...)
Fixed:           keras>=3.2 prints float32-exact moving statistics and a finite output.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
import keras  # noqa: E402
import numpy as np  # noqa: E402

print("keras", keras.__version__, "backend", keras.backend.backend())
x = np.array([[0.1], [0.4], [0.45], [0.9]], dtype=np.float16)

# 1. The moving statistics are rounded to float16 on every update.
layer = keras.layers.BatchNormalization(dtype="mixed_float16", momentum=0.9)
layer(x, training=True)
mean = float(np.mean(x.astype(np.float64)))
exact = 0.9 * 0.0 + 0.1 * mean
got = float(np.asarray(layer.moving_mean)[0])
print(f"moving_mean: {got!r} (float32 variable); exact {exact!r}; float16-rounded {float(np.float16(exact))!r}")
print("  rounded to float16 (TF backend):", got == float(np.float16(exact)) and got != float(np.float32(exact)))
print("  update lost, still the initial 0 (torch backend):", got == 0.0)

# 2. gamma = 1e5 (finite in the float32 variable) is read as float16 inf.
layer = keras.layers.BatchNormalization(dtype="mixed_float16", gamma_initializer=keras.initializers.Constant(1e5))
y = np.asarray(layer(np.array([[0.25], [0.75]], dtype=np.float16), training=True))
print("output with gamma = 1e5:", y.ravel(), "(expected -inf, +inf: the float16 output overflows; NaN = the defect)")
