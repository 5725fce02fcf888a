"""torch on CUDA: BatchNorm backward with float16 / bfloat16 input and float32
parameters (mixed-precision training): on torch's native CUDA kernels, the
NCHW (contiguous) path returns grad_weight and grad_bias with errors of
reduced-precision accumulation (~1e-2 in bfloat16, ~3e-3 in float16, for sums
over 100 values), while the same call on cuDNN (float16 only: torch never hands
bfloat16 to cuDNN), on the native channels-last kernels, and on the CPU is
accurate to float32 (~1e-6).

Run on a CUDA machine: python findings/torch_cuda_half_param_grads.py
Prints, per path, the error of grad_bias / grad_weight against a float64
computation on the SAME rounded input values (input rounding not counted).

Seen with torch 2.11.0+cu130, cuDNN 91900, NVIDIA H100 80GB HBM3, driver
580.159.04 (2026-11-23):
  bfloat16 cuda cudnn=True  (native: bf16 never goes to cuDNN)  grad_bias 0.0275  grad_weight 0.0649
  bfloat16 cuda cudnn=False contiguous                           grad_bias 0.0275  grad_weight 0.0649
  bfloat16 cuda cudnn=False channels_last                        grad_bias 0       grad_weight 6.0e-07
  float16  cuda cudnn=True  (cuDNN)                              grad_bias 0       grad_weight 8.2e-07
  float16  cuda cudnn=False contiguous                           grad_bias 0.00267 grad_weight 0.00251
  float16  cuda cudnn=False channels_last                        grad_bias 0       grad_weight 8.2e-07
  CPU, both dtypes                                               grad_bias 0       grad_weight <= 1.2e-06
Where: aten/src/ATen/native/cuda/Normalization.cu, batch_norm_backward_cuda:
the contiguous input takes the fused reduction + elementwise kernel
(batch_norm_backward_cuda_template, "Fused reduction & elementwise kernel"),
channels-last input the separate batch_norm_backward_reduce / _elemt
channels-last kernels, which accumulate in float32. The conformance cells see
the same with a contiguous grad_output on a channels_last bfloat16 input
(mixed memory formats fall back to the generic reduction).
"""

import numpy as np
import torch

assert torch.cuda.is_available(), "needs a CUDA device"
torch.manual_seed(0)
x64 = torch.randn(4, 3, 5, 5, dtype=torch.float64) * 1.5 - 1.0
g64 = torch.randn(4, 3, 5, 5, dtype=torch.float64)

for dtype in (torch.bfloat16, torch.float16):
    x_r, g_r = x64.to(dtype), g64.to(dtype)
    xr, gr = x_r.double().numpy(), g_r.double().numpy()
    mean, var = xr.mean(axis=(0, 2, 3), keepdims=True), xr.var(axis=(0, 2, 3), keepdims=True)
    x_hat = (xr - mean) / np.sqrt(var + 1e-5)
    ref_b, ref_w = gr.sum(axis=(0, 2, 3)), (gr * x_hat).sum(axis=(0, 2, 3))
    for device, cudnn, fmt in (("cpu", False, torch.contiguous_format), ("cuda", True, torch.contiguous_format),
                               ("cuda", False, torch.contiguous_format), ("cuda", False, torch.channels_last)):
        with torch.backends.cudnn.flags(enabled=cudnn):
            bn = torch.nn.BatchNorm2d(3, device=device)  # float32 parameters
            x = x_r.to(device).contiguous(memory_format=fmt).requires_grad_(True)
            bn(x).backward(g_r.to(device).contiguous(memory_format=fmt))
        gb, gw = bn.bias.grad.cpu(), bn.weight.grad.cpu()
        representable = bool((gb.to(dtype).float() == gb).all() and (gw.to(dtype).float() == gw).all())
        err_b = np.abs(gb.double().numpy() - ref_b).max()
        err_w = np.abs(gw.double().numpy() - ref_w).max()
        print(f"{str(dtype):15} {device:4} cudnn={str(cudnn):5} {str(fmt)[6:]:17} grad_bias err {err_b:.3g}  grad_weight err {err_w:.3g}  "
              f"param grads representable in {dtype}: {representable}  ({gb.dtype})")
print("float32 accumulation gives errors ~1e-6; ~1e-2 with representable values means rounding to the input dtype.")
