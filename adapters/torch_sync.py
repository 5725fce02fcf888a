"""``torch.nn.SyncBatchNorm`` (``torch/nn/modules/batchnorm.py``, ``torch/nn/modules/_functions.py``) on the CPU.

Measured (torch 2.13.0 CPU, ``findings/torch_syncbatchnorm_cpu.py``):

* no process group: ``SyncBatchNorm.forward`` synchronizes only when
  ``torch.distributed.is_initialized()`` (``need_sync``) and otherwise falls
  back to ``F.batch_norm``: plain LOCAL BatchNorm, bitwise equal to
  ``BatchNorm2d``. This row runs the one-replica cases that way (the module a
  single-process program holds after ``convert_sync_batchnorm``);
* a ``gloo`` process group of 2 CPU processes, training mode: ``ValueError:
  SyncBatchNorm expected input tensor to be on GPU or XPU or privateuseone``
  on every rank, before any communication (inference mode runs: it needs no
  synchronization). So the synchronized path (``_functions.SyncBatchNorm``:
  all-gather of per-rank mean/invstd/count, ``batch_norm_gather_stats_with_counts``,
  all-reduce of ``sum_dy``/``sum_dy_xmu`` in backward) cannot run on the CPU:
  every replica case is ``unsupported`` with that measured reason. It needs
  one GPU per rank (NCCL).

Idioms as :mod:`adapters.torch_nn` (any input rank >= 2: ``SyncBatchNorm``
accepts (N, C, *)).
"""

from __future__ import annotations

from bnconform.catalogue import Case

from .torch_nn import _TorchModule

#: The measured refusal (findings/torch_syncbatchnorm_cpu.py).
CPU_REFUSAL = ("torch.nn.SyncBatchNorm cannot synchronize on the CPU: in a gloo process group a training forward raises "
               "ValueError('SyncBatchNorm expected input tensor to be on GPU or XPU or privateuseone') on every rank "
               "(torch/nn/modules/batchnorm.py SyncBatchNorm.forward; measured with 2 gloo processes, "
               "findings/torch_syncbatchnorm_cpu.py); without a process group it is local BatchNorm, no replicas")


class SyncBatchNormCPU(_TorchModule):
    name, module_name, ranks = "torch.nn.SyncBatchNorm[CPU, no process group]", "SyncBatchNorm", (2, 3, 4, 5)
    #: Replica cases are this row's business: they get the measured reason, not the generic one.
    runs_replicas = True

    def capabilities(self, case: Case) -> str | None:
        if case.replicas is not None:
            return CPU_REFUSAL
        return super().capabilities(case)
