"""tf-keras 2.21.0: after a training call of BatchNormalization(fused=False) on an
EMPTY batch (N=0), the gradient of gamma is NaN. A sum over no values is 0
(PyTorch's BatchNorm gives grad_weight 0 there); beta's gradient is 0.

Mechanism: the non-fused path (tf_keras/src/layers/normalization/batch_normalization.py
BatchNormalization.call -> _moments -> tf.nn.moments: 0/0 = NaN; the zero-size guard
_support_zero_size_input is active only under a distribution strategy) normalises with
tf.nn.batch_normalization (tensorflow/python/ops/nn_impl.py: x * (rsqrt(var + eps) * gamma)
+ (beta - mean * inv)), so d gamma = (sum(g x) - mean sum(g)) * rsqrt(var + eps) = NaN
(the tensorflow known bug tf-nn-empty-batch-nan-grad-weight). fused=True needs 4-D input.
Found by `bnconform explore --framework keras.torch --seed 11` (2026-11-30), run in the tf-keras env.

Run: python findings/tf_keras_empty_batch_nan_grad_weight.py   (tf_keras==2.21.0 installed)
"""

import numpy as np
import tensorflow as tf
import tf_keras

x = tf.zeros((0, 1), tf.float32)
layer = tf_keras.layers.BatchNormalization(fused=False)
layer.build(x.shape)
with tf.GradientTape() as tape:
    loss = tf.reduce_sum(layer(x, training=True))
d_gamma, d_beta = (g.numpy() for g in tape.gradient(loss, [layer.gamma, layer.beta]))
print(f"tf_keras {tf_keras.__version__} fused=False: d gamma {d_gamma} (expected [0.]), d beta {d_beta} (expected [0.])")
assert np.isnan(d_gamma).all(), "fixed: d gamma is no longer NaN on an empty batch"
