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

from ._torch import MODULE_BY_RANK
from .torch_nn import _TorchModule


class BatchNormCUDA(_TorchModule):
    """``torch.nn.BatchNorm{1,2,3}d`` (by input rank) on ``cuda``, cuDNN enabled (torch's default)."""

    name = "torch.nn.BatchNormNd[cuda, cudnn]"
    device = "cuda"
    ranks = tuple(MODULE_BY_RANK)
    cudnn = True

    def framework_build(self) -> str | None:
        """cuDNN version and device name (``framework_version`` stays torch's PEP 440 version)."""
        if not self.torch.cuda.is_available():
            return None
        cudnn = self.torch.backends.cudnn.version()
        parts = [f"CUDA {self.torch.version.cuda}", f"cuDNN {cudnn}" if cudnn else "no cuDNN",
                 self.torch.cuda.get_device_name(0)]
        return "; ".join(parts)

    def module_for(self, case) -> str:
        return MODULE_BY_RANK[len(case.input.shape)]

    def scope(self, case):
        return self.torch.backends.cudnn.flags(enabled=self.cudnn)


class BatchNormCUDANative(BatchNormCUDA):
    """The same on torch's native CUDA kernels: ``torch.backends.cudnn.flags(enabled=False)``."""

    name = "torch.nn.BatchNormNd[cuda, native]"
    cudnn = False


class BatchNorm2dCUDAChannelsLast(BatchNormCUDA):
    """``BatchNorm2d`` on ``cuda`` fed ``torch.channels_last`` (NHWC in memory):
    cuDNN's NHWC kernels (``cudnnBatchNormalizationForwardTrainingEx`` with
    ``CUDNN_BATCHNORM_SPATIAL_PERSISTENT`` where torch selects it,
    ``aten/src/ATen/native/cudnn/BatchNorm.cpp``), else the native
    channels-last kernels (``batch_norm_collect_statistics_channels_last_kernel``)."""

    name = "torch.nn.BatchNorm2d[cuda, channels_last]"
    module_name, ranks = "BatchNorm2d", (4,)

    def prepare(self, x):
        return x.contiguous(memory_format=self.torch.channels_last)
