"""paddlepaddle 3.3.1 CPU, paddle.nn.BatchNorm2D: three defects, each printed
against a float64 NumPy computation.

1. Freezing ONE affine parameter (ParamAttr(trainable=False) -> stop_gradient)
   leaves the OTHER, trainable one without a gradient: grad is None, so SGD
   never updates it.
2. use_global_stats=False (batch statistics in every mode) with layer.eval():
   the forward normalises with the batch statistics, but grad_input is not the
   gradient of that forward (it matches neither the batch-statistics formula
   nor the batch statistics treated as constants).
3. One value per channel in training (N=1, no spatial): the kernel returns
   y = x unnormalised and leaves the moving statistics unchanged (the batch
   mean/biased variance are well defined: y should be beta, the moving mean
   should move towards x).

Run: python findings/paddle_batchnorm_cpu.py
"""

import warnings

import numpy as np
import paddle

warnings.simplefilter("ignore")
rng = np.random.default_rng(0)
x = rng.standard_normal((4, 3, 2, 2))
g = rng.standard_normal((4, 3, 2, 2))
ax, eps = (0, 2, 3), 1e-5
mean, var = x.mean(axis=ax, keepdims=True), x.var(axis=ax, keepdims=True)
xh = (x - mean) / np.sqrt(var + eps)
dx_batch = (g - g.mean(axis=ax, keepdims=True) - xh * (g * xh).mean(axis=ax, keepdims=True)) / np.sqrt(var + eps)

print("1. one frozen affine parameter")
for frozen in ("weight", "bias"):
    bn = paddle.nn.BatchNorm2D(3, weight_attr=paddle.ParamAttr(trainable=frozen != "weight"),
                               bias_attr=paddle.ParamAttr(trainable=frozen != "bias"))
    xt = paddle.to_tensor(x.astype("float32"), stop_gradient=False)
    bn(xt).backward(paddle.to_tensor(g.astype("float32")))
    other = "bias" if frozen == "weight" else "weight"
    expected = g.sum(axis=ax) if other == "bias" else (g * xh).sum(axis=ax)
    print(f"   {frozen} frozen: {other}.grad = {getattr(bn, other).grad}   expected {np.round(expected, 4)}")

print("2. use_global_stats=False, layer.eval(), backward")
bn = paddle.nn.BatchNorm2D(3, use_global_stats=False)
bn.eval()
xt = paddle.to_tensor(x.astype("float32"), stop_gradient=False)
y = bn(xt)
print(f"   forward max err vs batch-stats output: {np.abs(y.numpy() - xh).max():.3g}")
y.backward(paddle.to_tensor(g.astype("float32")))
print(f"   grad_input max err vs batch-stats gradient: {np.abs(xt.grad.numpy() - dx_batch).max():.3g}; "
      f"vs g/sqrt(batch_var+eps) (statistics as constants): "
      f"{np.abs(xt.grad.numpy() - g / np.sqrt(var + eps)).max():.3g}")

print("3. one value per channel in training")
bn = paddle.nn.BatchNorm1D(3, data_format="NC", bias_attr=paddle.ParamAttr(
    initializer=paddle.nn.initializer.Assign(np.array([0.5, -1.0, 2.0], np.float32))))
bn.train()
x1 = np.array([[3.0, -2.0, 7.0]], np.float32)
y1 = bn(paddle.to_tensor(x1))
print(f"   y = {y1.numpy()}  expected beta = [0.5 -1. 2.]; moving mean = {bn._mean.numpy()}  expected "
      f"{0.1 * x1[0]}; moving var = {bn._variance.numpy()}  expected {0.9 * np.ones(3)}")
