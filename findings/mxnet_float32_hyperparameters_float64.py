"""mxnet 1.9.1: float64 BatchNorm training keeps float32 hyper-parameters.

``BatchNormParam::momentum`` (src/operator/nn/batch_norm-inl.h) and
``SGDParam::lr`` (src/operator/optimizer_op-inl.h) are C++ ``float``: a
float64 running-stat update uses ``1 - float32(0.9)`` = 0.10000002384 as the
new-batch weight, and a float64 SGD step uses ``float32(lr)``. The float64
results carry float32-sized relative errors (~2.4e-7 / ~1.5e-8) instead of ~1e-16.

In the suite the momentum part is the quirk ``mxnet-momentum-float32-decay``
(oracle knob ``momentum_dtype: float32_decay`` reproduces it exactly); the
learning-rate part is the known bug ``mxnet-sgd-lr-float32-in-float64``.

Run (numpy 1.23.5): MXNET_STORAGE_FALLBACK_LOG_VERBOSE=0 python findings/mxnet_float32_hyperparameters_float64.py
Prints the errors against a float64 NumPy computation.
"""

import mxnet as mx
import numpy as np
from mxnet import autograd, nd

rng = np.random.default_rng(63)
x64 = rng.normal(0.5, 3.0, (4, 3, 3, 3))
g64 = rng.normal(0.0, 1.0, (4, 3, 3, 3))
eps, m, lr = 1e-5, 0.1, 0.1                      # m: weight of the new batch (decay 0.9)

f64 = lambda a: nd.array(a, dtype="float64")     # noqa: E731
gamma, beta = f64([1.0, -0.5, 2.0]), f64(np.zeros(3))
rm, rv = f64(np.zeros(3)), f64(np.ones(3))
gamma.attach_grad()
beta.attach_grad()
with autograd.record(train_mode=True):
    y = nd.BatchNorm(f64(x64), gamma, beta, rm, rv, eps=eps, momentum=1 - m, fix_gamma=False)
y.backward(f64(g64))
opt = mx.optimizer.SGD(learning_rate=lr, momentum=0.0, wd=0.0, rescale_grad=1.0)
upd = mx.optimizer.get_updater(opt)
upd(0, gamma.grad, gamma)
upd(1, beta.grad, beta)

mean = x64.mean(axis=(0, 2, 3))
ref_rm = m * mean
ref_beta = 0.0 - lr * g64.sum(axis=(0, 2, 3))
print("mxnet", mx.__version__, "| running_mean dtype", rm.dtype)
print("running_mean rel err", np.abs(rm.asnumpy() - ref_rm) / np.abs(ref_rm))
print("  = 1 - float32(0.9) vs 0.1:", (1 - float(np.float32(0.9))) / 0.1 - 1)
print("beta after SGD rel err", np.abs(beta.asnumpy() - ref_beta) / np.abs(ref_beta))
print("  = float32(0.1) vs 0.1:", float(np.float32(0.1)) / 0.1 - 1)
print("float64 arithmetic would give ~1e-16.")
