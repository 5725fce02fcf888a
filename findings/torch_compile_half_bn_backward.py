"""torch 2.13.0 CPU: torch.compile (inductor) BatchNorm backward with float16 /
bfloat16 input is markedly less accurate than eager.

Both run on the SAME half-precision values; the reference is float64 on those
values. Eager accumulates in float32 (opmath) and stays at float32 accuracy;
the compiled backward's grad_weight error is 1-2 orders of magnitude larger.

Run: python findings/torch_compile_half_bn_backward.py
"""

import numpy as np
import torch

torch.manual_seed(0)
for dtype in (torch.float16, torch.bfloat16):
    x = (torch.randn(8, 2, 4, 4, dtype=torch.float64) * 1.5 - 1.0).to(dtype)
    g = torch.randn(8, 2, 4, 4, dtype=torch.float64).to(dtype)
    xr, gr = x.double().numpy(), g.double().numpy()
    mean, var = xr.mean(axis=(0, 2, 3), keepdims=True), xr.var(axis=(0, 2, 3), keepdims=True)
    ref_grad_weight = (gr * (xr - mean) / np.sqrt(var + 1e-5)).sum(axis=(0, 2, 3))
    for label, compile_it in (("eager", False), ("torch.compile", True)):
        torch._dynamo.reset()
        bn = torch.nn.BatchNorm2d(2)  # float32 parameters
        f = torch.compile(bn) if compile_it else bn
        xi = x.clone().requires_grad_(True)
        f(xi).backward(g)
        err = np.abs(bn.weight.grad.double().numpy() - ref_grad_weight).max()
        print(f"{str(dtype):15} {label:14} grad_weight max abs err vs float64: {err:.3g}")
