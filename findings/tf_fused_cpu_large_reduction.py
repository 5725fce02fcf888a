"""TensorFlow's fused CPU BatchNorm at 2^21 values per channel (known bugs tf-fused-cpu-sequential-summation,
tf-keras-fused-cpu-sequential-summation).

Batch 8 at 512x512, one channel, float32, NCHW (the catalogue's segmentation-head-float32): the batch mean and
variance of tf.compat.v1.nn.fused_batch_norm against float64, next to the float32 pairwise-summation scale
sqrt(m) u and the sequential-summation scale m u (u = 2^-24). A sequential float accumulator per channel
(tensorflow/core/kernels/fused_batch_norm_op.cc, the (N*H*W, C) reduction) errs on the m u scale.
Run: python findings/tf_fused_cpu_large_reduction.py (tensorflow-cpu 2.21.0). Prints the errors.
"""

import numpy as np
import tensorflow as tf

rng = np.random.default_rng(2106)
x = (0.3 + 1.2 * rng.standard_normal((8, 1, 512, 512))).astype(np.float32)
m, u = x.size, 2.0 ** -24
y, mean, var = tf.compat.v1.nn.fused_batch_norm(tf.constant(x), tf.ones([1]), tf.zeros([1]), epsilon=1e-5,
                                                data_format="NCHW", is_training=True)[:3]
x64 = x.astype(np.float64)
print(f"values per channel m = {m}")
print(f"mean error {abs(float(mean[0]) - x64.mean()):.3e}  (sqrt(m) u E|x| = {np.sqrt(m) * u * np.abs(x64).mean():.3e}, "
      f"m u E|x| = {m * u * np.abs(x64).mean():.3e})")
print(f"variance (Bessel) error {abs(float(var[0]) - x64.var(ddof=1)):.3e}  (sqrt(m) u var = {np.sqrt(m) * u * x64.var():.3e})")
