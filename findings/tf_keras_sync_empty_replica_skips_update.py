"""tf-keras 2.21.0 (TF 2.21.0): BatchNormalization(synchronized=True) under
tf.distribute.MirroredStrategy: a replica whose batch is EMPTY skips the moving
average update (tf_keras/layers/normalization/batch_normalization.py
_assign_moving_average: tf.where(inputs_size > 0, update_delta, 0), active under
a strategy through _support_zero_size_input) although the statistics it computed
are the GLOBAL ones: the replicas' moving statistics diverge (replica 1 keeps
0 / 1 below while replica 0 moves to the batch statistics). Keras 3 updates every
replica alike.

Run: python findings/tf_keras_sync_empty_replica_skips_update.py
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)
import tf_keras  # noqa: E402

print(f"tf-keras {tf_keras.__version__}, tensorflow {tf.__version__}")
x = np.arange(12, dtype=np.float32).reshape(6, 2)
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"], cross_device_ops=tf.distribute.ReductionToOneDevice())
with strategy.scope():
    layer = tf_keras.layers.BatchNormalization(momentum=0.0, synchronized=True)  # new batch weight 1
    layer.build(x.shape)
parts = [tf.constant(x), tf.constant(x[:0])]  # replica 1: an empty batch
dist = strategy.experimental_distribute_values_from_function(lambda ctx: parts[ctx.replica_id_in_sync_group])
strategy.run(lambda xr: layer(xr, training=True), args=(dist,))
for name in ("moving_mean", "moving_variance"):
    rows = [v.numpy() for v in strategy.experimental_local_results(getattr(layer, name))]
    print(f"{name}: replica 0 {rows[0]}, replica 1 {rows[1]}")
print(f"batch statistics of the union: mean {x.mean(axis=0)}, variance {x.var(axis=0)}")
