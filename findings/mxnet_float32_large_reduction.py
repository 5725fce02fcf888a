"""mxnet 1.9.1 CPU (oneDNN and native kernels): float32 BatchNorm in training
mode loses float32 accuracy in its OUTPUT (and grad_input) as the reduction per
channel grows: the normalised output's error grows faster than the sqrt(m)
rounding-error growth of a float32 accumulation, and leaves that bound (the
suite's tolerance, bnconform/compare.py) between 401,408 and 2,097,152 values
per channel — the ResNet-50 stem at batch 32 passes, a segmentation head at
batch 8 x 512 x 512 (cases/realistic.yaml segmentation-head-float32) does not.
The statistics MXNet reports (running_mean, running_var) stay within it.

Run (numpy 1.23.5): MXNET_STORAGE_FALLBACK_LOG_VERBOSE=0 python findings/mxnet_float32_large_reduction.py
(MXNET_MKLDNN_ENABLED=0 for the native kernel). For each size m it prints the
output's max abs error against a float64 NumPy computation on the SAME float32
values and that error over the float32-accumulation bound 4 u32 sqrt(m) |x_hat|
(u32 = 2^-24): a ratio above 1 is the defect.
"""

import mxnet as mx  # noqa: F401
import numpy as np
from mxnet import autograd, nd

eps = 1e-5
rng = np.random.default_rng(2106)
for n, h in ((1, 256), (4, 256), (8, 256), (8, 512), (16, 512)):
    m = n * h * h
    x32 = rng.normal(0.3, 1.2, (n, 1, h, h)).astype(np.float32)
    gamma, beta, rm, rv = nd.ones(1), nd.zeros(1), nd.zeros(1), nd.ones(1)
    with autograd.record(train_mode=True):
        y = nd.BatchNorm(nd.array(x32), gamma, beta, rm, rv, eps=eps, momentum=0.9, fix_gamma=False)
    y = y.asnumpy().astype(np.float64)
    xr = x32.astype(np.float64)
    mean, var = xr.mean(), xr.var()
    x_hat = (xr - mean) / np.sqrt(var + eps)
    err = np.abs(y - x_hat)
    bound = 4 * 2.0**-24 * (np.sqrt(m) * (np.abs(xr) + abs(mean)) / np.sqrt(var + eps) + np.abs(x_hat))
    print(f"m = {m:>9,}  output max abs err {err.max():.3g}   worst err / float32-accumulation bound {np.max(err / bound):.3g}")
