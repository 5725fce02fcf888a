"""``torch.nn.BatchNorm1d/2d/3d`` on a CUDA device: the cuDNN path and the
native CUDA kernels, side by side (group ``torch.cuda``, tox env ``torch-cuda``).

Without a CUDA device every cell of these rows is skipped with the reason
(:meth:`TorchAdapter.available`); CI has no GPU, so their results come from a
GPU machine as a shard of their own (``reports/shards/``) that the report
merges.

Kernel selection (torch ``aten/src/ATen/native/Normalization.cpp``,
``_select_batch_norm_backend``): cuDNN is used when it is enabled, the input
has ``dim() >= 3``, weight and bias are defined, the input is not bfloat16 (and
float16 only with float32 parameters), the running buffers are both defined or
both absent in training, and ``eps >= CUDNN_BN_MIN_EPSILON``; otherwise the
native kernels (``aten/src/ATen/native/cuda/Normalization.cuh``) run. So the
``[cuda, cudnn]`` row runs cuDNN on rank >= 3 affine float32/float64/float16
cases and the native kernels elsewhere (rank 2, ``affine: false``, bfloat16);
the ``[cuda, native]`` row disables cuDNN (``torch.backends.cudnn.flags``) and
runs the native kernels everywhere.

Translation is exactly the CPU module adapter's (:mod:`adapters.torch_nn`);
tensors are created on the device and copied back with ``.cpu()``.
"""

from __future__ import annotations

from bnconform.adapter import Divergence
from bnconform.catalogue import Backward, Case

from ._torch import MODULE_BY_RANK
from .torch_nn import _TorchModule


def _half_backward(case: Case, dtypes=("float16", "bfloat16")) -> bool:
    return case.input.dtype in dtypes and any(isinstance(s, Backward) for s in case.steps)


def _cudnn_eligible(case: Case) -> bool:
    """torch's ``_select_batch_norm_backend`` conditions that a case decides:
    rank >= 3, weight and bias defined, input not bfloat16."""
    return len(case.input.shape) >= 3 and case.layer.affine and case.input.dtype != "bfloat16"


def _native_half_backward(summary_path: str, when) -> Divergence:
    return Divergence(
        id="cuda-native-half-backward-accumulation",
        kind="known_bug",
        summary=("float16/bfloat16 input with float32 parameters, backward on torch's native CUDA kernels "
                 f"({summary_path}): grad_weight and grad_bias (and in bfloat16 grad_input) carry errors of "
                 "reduced-precision accumulation, 3e-3..7e-2 on sums of 100 values, 20-100x outside the "
                 "float32-accumulation bound that cuDNN, the native channels-last kernels and the CPU meet"),
        source=("aten/src/ATen/native/cuda/Normalization.cu, batch_norm_backward_cuda: the fused reduction + "
                "elementwise kernel (batch_norm_backward_cuda_template) for contiguous input, and the generic "
                "batch_norm_backward_reduce path for mixed memory formats; _select_batch_norm_backend in "
                "aten/src/ATen/native/Normalization.cpp never hands bfloat16 to cuDNN"),
        finding="findings/torch_cuda_half_param_grads.py",
        observables=("grad_input", "grad_weight", "grad_bias"),
        when=when,
    )


class BatchNormCUDA(_TorchModule):
    """``torch.nn.BatchNorm{1,2,3}d`` (by input rank) on ``cuda``, cuDNN enabled (torch's default)."""

    name = "torch.nn.BatchNormNd[cuda, cudnn]"
    device = "cuda"
    ranks = tuple(MODULE_BY_RANK)
    cudnn = True
    divergences = (_native_half_backward(
        "bfloat16 always, float16 where cuDNN is not eligible: rank 2 or affine=false",
        lambda case: _half_backward(case) and not _cudnn_eligible(case)),)

    def framework_version(self) -> str:
        version = super().framework_version()
        cudnn = self.torch.backends.cudnn.version() if self.torch.cuda.is_available() else None
        return f"{version}, cuDNN {cudnn}" if cudnn else version

    def module_for(self, case) -> str:
        return MODULE_BY_RANK[len(case.input.shape)]

    def scope(self, case):
        return self.torch.backends.cudnn.flags(enabled=self.cudnn)


class BatchNormCUDANative(BatchNormCUDA):
    """The same on torch's native CUDA kernels: ``torch.backends.cudnn.flags(enabled=False)``."""

    name = "torch.nn.BatchNormNd[cuda, native]"
    cudnn = False
    divergences = (_native_half_backward("cuDNN disabled: every half-precision backward", _half_backward),)


class BatchNorm2dCUDAChannelsLast(BatchNormCUDA):
    """``BatchNorm2d`` on ``cuda`` fed ``torch.channels_last`` (NHWC in memory):
    cuDNN's NHWC kernels (``cudnnBatchNormalizationForwardTrainingEx`` with
    ``CUDNN_BATCHNORM_SPATIAL_PERSISTENT`` where torch selects it,
    ``aten/src/ATen/native/cudnn/BatchNorm.cpp``), else the native
    channels-last kernels (``batch_norm_collect_statistics_channels_last_kernel``)."""

    name = "torch.nn.BatchNorm2d[cuda, channels_last]"
    module_name, ranks = "BatchNorm2d", (4,)
    # grad_output arrives contiguous (NCHW), as in the CPU channels_last row: the
    # mixed memory formats take the generic reduction; float16 goes to cuDNN.
    divergences = (_native_half_backward(
        "bfloat16 channels_last input with a contiguous grad_output",
        lambda case: _half_backward(case, ("bfloat16",))),)

    def prepare(self, x):
        return x.contiguous(memory_format=self.torch.channels_last)
