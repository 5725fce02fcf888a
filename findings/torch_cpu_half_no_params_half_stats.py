"""torch 2.13.0 CPU: BatchNorm on a float16/bfloat16 input with NEITHER affine
parameters NOR running statistics (affine=False, track_running_stats=False)
normalises with a batch mean and inverse std rounded to the half input dtype,
while the same call with float32 weight/bias or running statistics (the
"mixed type" path) keeps them in float32: the output error grows by ~10x at a
mean of 1 and a spread of 0.05 (it scales with |mean| / std).

Found by ``bnconform explore --framework torch --seed 1`` (minimal cases:
cases/explored.yaml explored-torch-half-no-params-*).

Source: aten/src/ATen/native/Normalization.cpp (batch_norm_cpu: is_mixed_type
needs a float32 weight/bias/running stat; otherwise save_mean / save_invstd
are allocated in the input dtype) — visible below as the dtype of the mean
and invstd that aten.native_batch_norm returns.

Run: python findings/torch_cpu_half_no_params_half_stats.py
"""

import torch

torch.manual_seed(0)
x = (1 + 0.05 * torch.randn(64, 3, 4, 4)).half()
x64 = x.double()
mean = x64.mean((0, 2, 3), keepdim=True)
ref = (x64 - mean) / torch.sqrt(x64.var((0, 2, 3), unbiased=False, keepdim=True) + 1e-5)  # float64, same half values
for affine, track in [(True, True), (True, False), (False, True), (False, False)]:
    bn = torch.nn.BatchNorm2d(3, affine=affine, track_running_stats=track).train()
    err = (bn(x).double() - ref).abs().max().item()
    print(f"affine={affine!s:5} track_running_stats={track!s:5} output max abs err {err:.3g}")
for weight in (None, torch.ones(3)):
    _, m, invstd = torch.ops.aten.native_batch_norm(x, weight, None, None, None, True, 0.1, 1e-5)
    print(f"native_batch_norm(weight={'float32' if weight is not None else 'None'}): save_mean {m.dtype}, "
          f"save_invstd {invstd.dtype}")
print("float32 statistics give ~1e-3 here (half output rounding); ~1e-2 means half-precision mean/invstd.")
