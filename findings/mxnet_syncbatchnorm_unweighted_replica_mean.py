"""MXNet 1.9.1: gluon.contrib.nn.SyncBatchNorm runs on CPU contexts (mx.cpu(0), mx.cpu(1) in
one process) and synchronizes them, but with uneven per-device batches it does not compute
the statistics of the union of the devices' values.

src/operator/contrib/sync_batch_norm-inl.h (SyncBatchNorm::Forward): each device computes
its LOCAL E[x] and E[x^2] (scale = 1 / local count), SharedND::MeanReady averages them
unweighted (mean_ = sum / num_devices), then var = E[x^2] - E[x]^2 (one pass, no clamp).
Equal per-device batches: the union's statistics (up to the one-pass rounding); uneven: the
average of per-device means (here devices of 6 and 2 samples). Not in the suite as a row yet
(issue 18 follow-up): its oracle profile needs the one-pass variance emulated per replica.

Run: python findings/mxnet_syncbatchnorm_unweighted_replica_mean.py  (env: mxnet)
"""

import mxnet as mx
import numpy as np
from mxnet.gluon.contrib.nn import SyncBatchNorm

print("mxnet", mx.__version__)
x = np.random.default_rng(0).normal(2.0, 3.0, (8, 3, 2, 2)).astype(np.float32)
ctxs = [mx.cpu(0), mx.cpu(1)]
for split in (4, 6):
    bn = SyncBatchNorm(in_channels=3, num_devices=2, momentum=0.9, epsilon=1e-5)
    bn.initialize(ctx=ctxs)
    parts = [mx.nd.array(x[:split], ctx=ctxs[0]), mx.nd.array(x[split:], ctx=ctxs[1])]
    with mx.autograd.record():
        ys = [bn(p) for p in parts]
    y = np.concatenate([o.asnumpy() for o in ys])
    xd = x.astype(np.float64)
    m, v = xd.mean(axis=(0, 2, 3)), xd.var(axis=(0, 2, 3))
    union = (xd - m[None, :, None, None]) / np.sqrt(v[None, :, None, None] + 1e-5)
    a, b = xd[:split], xd[split:]
    ma = (a.mean(axis=(0, 2, 3)) + b.mean(axis=(0, 2, 3))) / 2
    va = ((a**2).mean(axis=(0, 2, 3)) + (b**2).mean(axis=(0, 2, 3))) / 2 - ma**2
    avg = (xd - ma[None, :, None, None]) / np.sqrt(va[None, :, None, None] + 1e-5)
    print(f"devices of {split} and {8 - split} samples: max |y - union-normalised| {np.abs(y - union).max():.3g}, "
          f"max |y - replica-average-normalised| {np.abs(y - avg).max():.3g}")
