"""torch 2.13.0 CPU: BatchNorm2d backward with bfloat16 input in channels_last
memory format loses precision in grad_bias / grad_weight / grad_input, while
the same call on a contiguous (NCHW) tensor is accurate.

Run: python findings/torch_bf16_channels_last_backward.py [float16]
Prints the error of each path against a float64 computation on the SAME
bfloat16 values (so input rounding is not counted). With ``float16``: the same
for float16 input, which took the same fallback path from torch 2.2 (the first
release with a float16 CPU kernel, pytorch/pytorch#102070) to 2.6 (release
sweep shards torch-2.2.2 ... torch-2.6.0; fixed later: see
expectations/torch.yaml half-channels-last-mixed-format-backward).
"""

import sys

import numpy as np
import torch

HALF = getattr(torch, sys.argv[1]) if len(sys.argv) > 1 else torch.bfloat16

torch.manual_seed(0)
x64 = torch.randn(4, 3, 5, 5, dtype=torch.float64) * 1.5 - 1.0
g64 = torch.randn(4, 3, 5, 5, dtype=torch.float64)
x_bf, g_bf = x64.to(HALF), g64.to(HALF)

# float64 reference on the bfloat16-rounded values
xr, gr = x_bf.double().numpy(), g_bf.double().numpy()
mean, var = xr.mean(axis=(0, 2, 3), keepdims=True), xr.var(axis=(0, 2, 3), keepdims=True)
x_hat = (xr - mean) / np.sqrt(var + 1e-5)
ref_grad_bias = gr.sum(axis=(0, 2, 3))
ref_grad_weight = (gr * x_hat).sum(axis=(0, 2, 3))

paths = [(torch.contiguous_format, torch.contiguous_format), (torch.channels_last, torch.channels_last),
         (torch.channels_last, torch.contiguous_format)]
for fmt, gfmt in paths:
    bn = torch.nn.BatchNorm2d(3)  # float32 parameters, as in mixed-precision training
    x = x_bf.contiguous(memory_format=fmt).requires_grad_(True)
    bn(x).backward(g_bf.contiguous(memory_format=gfmt))
    err_b = np.abs(bn.bias.grad.double().numpy() - ref_grad_bias).max()
    err_w = np.abs(bn.weight.grad.double().numpy() - ref_grad_weight).max()
    print(f"input {str(fmt):24} grad_output {str(gfmt):24} grad_bias max err {err_b:.3g}   grad_weight max err {err_w:.3g}")
print(f"torch {torch.__version__}, {HALF}: float32 accumulation would give errors ~1e-6; errors ~1e-2 mean "
      f"half-precision accumulation.")
