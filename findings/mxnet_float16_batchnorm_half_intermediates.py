"""mxnet 1.9.1 CPU (native kernel; oneDNN takes float32 only): BatchNorm with
float16 input keeps gamma/beta/running stats in float32, yet rounds
intermediates to float16:

* batch_norm.cc VARIANCE_TO_INVSTD(var, eps) = 1/sqrt(var + DType(eps)): with
  DType = mshadow::half_t, mshadow's template ``operator+(T, half_t)`` returns
  half_t, so var + eps is ROUNDED TO FLOAT16 before the sqrt. The backward
  recovers the variance from that invstd for the running-variance update.
* BatchNormBackwardImpl: dotp += (x - mean) * dy with x, dy half_t: each
  product is rounded to float16 before the float32 sum (grad_gamma).

Run (numpy 1.23.5): MXNET_STORAGE_FALLBACK_LOG_VERBOSE=0 python findings/mxnet_float16_batchnorm_half_intermediates.py
Prints MXNet's float32 running_var and grad_gamma against a float64 NumPy
computation on the SAME float16 values (input rounding is not counted), and
against the same computation with var + eps rounded to float16.
Upstream: https://github.com/apache/mxnet/issues/8509 (float16 BatchNorm computed in float16 on the CPU).
"""

import mxnet as mx
import numpy as np
from mxnet import autograd, nd

rng = np.random.default_rng(62)
x16 = rng.normal(0.0, 1.0, (8, 2, 4, 4)).astype(np.float16)
g16 = rng.normal(0.0, 1.0, (8, 2, 4, 4)).astype(np.float16)
eps, decay = 1e-5, 0.9

gamma, beta = nd.array([0.5, 2.0]), nd.zeros(2)          # float32 parameters
rm, rv = nd.zeros(2), nd.ones(2)
gamma.attach_grad()
beta.attach_grad()
x = nd.array(x16, dtype="float16")
with autograd.record(train_mode=True):
    y = nd.BatchNorm(x, gamma, beta, rm, rv, eps=eps, momentum=decay, fix_gamma=False)
y.backward(nd.array(g16, dtype="float16"))                 # the running stats are updated here

xr, gr = x16.astype(np.float64), g16.astype(np.float64)
mean, var = xr.mean(axis=(0, 2, 3)), xr.var(axis=(0, 2, 3))          # biased, as MXNet uses
x_hat = (xr - mean[None, :, None, None]) / np.sqrt(var[None, :, None, None] + eps)
ref_rv = decay * 1.0 + (1 - decay) * var
ref_dgamma = (gr * x_hat).sum(axis=(0, 2, 3))
half_sum = (var.astype(np.float32) + np.float32(eps)).astype(np.float16).astype(np.float64)  # var + eps in float16
emul_rv = decay * 1.0 + (1 - decay) * (half_sum - eps)

got_rv, got_dg = rv.asnumpy().astype(np.float64), gamma.grad.asnumpy().astype(np.float64)
u32 = np.finfo(np.float32).eps / 2
print("mxnet", mx.__version__)
print("running_var  mxnet           ", got_rv)
print("running_var  float64 ref     ", ref_rv, " rel err", np.abs(got_rv - ref_rv) / ref_rv)
print("running_var  ref, var+eps fp16", emul_rv, " rel err", np.abs(got_rv - emul_rv) / emul_rv)
print("grad_gamma   mxnet           ", got_dg)
print("grad_gamma   float64 ref     ", ref_dgamma, " abs err", np.abs(got_dg - ref_dgamma))
print(f"float32 arithmetic would give relative errors ~{u32 * 10:.1e}; ~1e-4 means float16 intermediates.")
