"""tf-keras 2.21.0 (TF 2.21.0): BatchNormalization(synchronized=True) under
tf.distribute.MirroredStrategy over 2 logical CPUs computes the batch variance
as max(E[x^2] - E[x]^2, 0) from all-reduced float32 sums
(tf_keras/layers/normalization/batch_normalization.py _sync_calculate_mean_and_var):
catastrophic cancellation when a channel's mean is large against its spread.
The unsynchronized fused=False path (tf.nn.moments) is two-pass and accurate.

Run: python findings/tf_keras_synchronized_one_pass_variance.py
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)
import tf_keras  # noqa: E402

print(f"tf-keras {tf_keras.__version__}, tensorflow {tf.__version__}")
rng = np.random.default_rng(185)
x = (1000.0 + 0.5 * rng.standard_normal((6, 2, 3, 3))).astype(np.float32)
var64 = x.astype(np.float64).var(axis=(0, 2, 3))
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"], cross_device_ops=tf.distribute.ReductionToOneDevice())
with strategy.scope():
    layer = tf_keras.layers.BatchNormalization(axis=1, momentum=0.0, epsilon=1e-5, synchronized=True)
    layer.build(x.shape)
parts = [tf.constant(x[:3]), tf.constant(x[3:])]
dist = strategy.experimental_distribute_values_from_function(lambda ctx: parts[ctx.replica_id_in_sync_group])
strategy.run(lambda xr: layer(xr, training=True), args=(dist,))
plain = tf_keras.layers.BatchNormalization(axis=1, momentum=0.0, epsilon=1e-5, fused=False)
plain(x, training=True)
print(f"float64 batch variance (two-pass, same float32 values): {var64}")
print(f"synchronized=True, 2 replicas: moving_variance {layer.moving_variance.numpy()}")
print(f"fused=False, one replica:      moving_variance {plain.moving_variance.numpy()}")
