"""MXNet 1.9.1 (CPU, oneDNN on or off): a training forward + backward of
BatchNorm on an EMPTY batch (N=0) makes the gradient of gamma NaN and, in the
backward, writes NaN into moving_mean and moving_var. A sum over no values is 0
(PyTorch's BatchNorm gives grad_weight 0 there) and an empty batch carries no
statistics (PyTorch leaves the running statistics unchanged); beta's gradient is 0.

Mechanism: src/operator/nn/batch_norm.cc BatchNormForwardImpl saves the batch mean
sum / itemCountPerChannel = 0/0 = NaN and invstd = 1/sqrt(0/0 + eps) = NaN (only
eps == 0 with a zero sum is guarded); BatchNormBackwardImpl then averages the saved
mean and INVSTD_TO_VARIANCE(invstd) into the running statistics (the update runs
in the backward) and writes gradWeight = dotp * invstd = 0 * NaN. With the default
fix_gamma=True gamma's gradient is set to 0, but the running statistics still
become NaN. oneDNN takes only 4-D float32 input with C % 8 == 0: a 2-D batch runs
this native kernel either way. A training forward without backward leaves the
running statistics unchanged. (A zero-size shape needs mx.util.np_shape(True) in
MXNet 1.x, whose legacy shapes read 0 as "unknown".)
Found by `bnconform explore --framework keras.torch --seed 11` (2026-11-30), run in the mxnet envs.

Run: python findings/mxnet_empty_batch_nan_backward.py   (and with MXNET_MKLDNN_ENABLED=0)
"""

import mxnet as mx
import numpy as np

with mx.util.np_shape(True):
    x = mx.nd.zeros((0, 1))
    gamma, beta = mx.nd.ones((1,)), mx.nd.zeros((1,))
    moving_mean, moving_var = mx.nd.zeros((1,)), mx.nd.ones((1,))
    for p in (x, gamma, beta):
        p.attach_grad()
    with mx.autograd.record(train_mode=True):
        y = mx.nd.BatchNorm(x, gamma, beta, moving_mean, moving_var, eps=1e-5, momentum=0.9, fix_gamma=False)
    after_forward = moving_mean.asnumpy().copy(), moving_var.asnumpy().copy()
    y.backward(mx.nd.ones_like(y))
d_gamma, d_beta = gamma.grad.asnumpy(), beta.grad.asnumpy()
print(f"mxnet {mx.__version__}: d gamma {d_gamma} (expected [0.]), d beta {d_beta} (expected [0.])")
print(f"  moving_mean/moving_var after the forward {after_forward[0]} {after_forward[1]}, after the backward "
      f"{moving_mean.asnumpy()} {moving_var.asnumpy()} (expected unchanged [0.] [1.])")
assert np.isnan(d_gamma).all(), "fixed: d gamma is no longer NaN on an empty batch"
assert np.isnan(moving_mean.asnumpy()).all(), "fixed: the backward no longer writes NaN running statistics"
