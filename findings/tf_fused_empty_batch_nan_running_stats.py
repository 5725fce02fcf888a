"""TensorFlow 2.21 (CPU): FusedBatchNormV3 in training on an EMPTY batch (N=0)
returns NaN as the new running mean and variance. An empty batch carries no
statistics; the expected running statistics are the unchanged ones (PyTorch
returns early). Found by `bnconform explore --framework tensorflow --seed 11`.

Run: python findings/tf_fused_empty_batch_nan_running_stats.py
"""

import numpy as np
import tensorflow as tf

x = tf.zeros((0, 1, 1, 1), tf.float32)  # NHWC, one channel, no values
mean, var = tf.constant([0.5]), tf.constant([2.0])
y, new_mean, new_var, *_ = tf.raw_ops.FusedBatchNormV3(
    x=x, scale=tf.ones([1]), offset=tf.zeros([1]), mean=mean, variance=var, epsilon=1e-5,
    exponential_avg_factor=0.1, data_format="NHWC", is_training=True)
print(f"tensorflow {tf.__version__}: running mean {new_mean.numpy()} variance {new_var.numpy()}; "
      f"expected unchanged {mean.numpy()} {var.numpy()}")
assert np.isnan(new_mean.numpy()).all(), "fixed: the running mean is no longer NaN after an empty batch"
