"""MXNet 1.9.1 gluon: gamma frozen with ``lr_mult = 0`` becomes NaN after one
Trainer step when its gradient is NaN (a NaN in the input channel). A frozen
parameter must stay as it was (PyTorch ``requires_grad=False``; MXNet's own
``grad_req='null'``): the SGD kernel still computes ``w - (lr * lr_mult) * grad``
= ``w - 0 * NaN``. Found by `bnconform explore --framework mxnet --seed 11`.

Run: python findings/mxnet_gluon_lr_mult_zero_nan.py
"""

import mxnet as mx
import numpy as np

net = mx.gluon.nn.BatchNorm(in_channels=1)
net.initialize(ctx=mx.cpu())
net.gamma.lr_mult = 0.0  # freeze gamma, the documented gluon idiom
trainer = mx.gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.1, "momentum": 0.0, "wd": 0.0})
x = mx.nd.array(np.array([[np.nan], [1.0]], dtype=np.float32))
with mx.autograd.record(train_mode=True):
    y = net(x)
y.backward(mx.nd.ones_like(y))
print("gamma gradient:", net.gamma.grad().asnumpy())
trainer.step(1)
gamma = net.gamma.data().asnumpy()
print(f"mxnet {mx.__version__}: frozen gamma after one step {gamma} (expected [1.])")
assert np.isnan(gamma).all(), "fixed: a parameter with lr_mult = 0 is no longer changed by a NaN gradient"
