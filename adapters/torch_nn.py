"""Adapters for ``torch.nn.BatchNorm1d/2d/3d`` (``torch/nn/modules/batchnorm.py``).

Idioms translated:
* mode ``train`` -> ``module.train()``; ``eval`` and ``train_global_stats``
  -> ``module.eval()`` (under autograd the latter still yields gradients).
* ``layer.frozen`` -> ``parameter.requires_grad_(False)`` and the parameter
  left out of ``torch.optim.SGD``.
* ``sgd_step`` -> ``torch.optim.SGD(params, lr).step()`` (plain SGD).
* ``backward`` -> ``output.backward(grad_output, retain_graph=retain)`` after
  clearing every ``.grad`` (gradients are not accumulated across steps).
"""

from __future__ import annotations

from bnconform.catalogue import Case

from ._torch import TorchAdapter


class _TorchModule(TorchAdapter):
    module_name = ""
    ranks: tuple[int, ...] = ()

    def module_for(self, case: Case) -> str:
        """Name of the ``torch.nn`` module class to instantiate."""
        return self.module_name

    def prepare(self, x):
        """The input tensor as the user would pass it (memory format hook)."""
        return x

    def call(self, cell, x):
        """Run the module (hook for compiled execution paths)."""
        return cell.module(x)

    def capabilities(self, case: Case) -> str | None:
        reason = super().capabilities(case)
        if reason:
            return reason
        rank = len(case.input.shape)
        if rank not in self.ranks:
            shapes = " or ".join({2: "(N, C)", 3: "(N, C, L)", 4: "(N, C, H, W)", 5: "(N, C, D, H, W)"}[r]
                                 for r in self.ranks)
            return f"torch.nn.{self.module_name} takes {shapes} input, the case has rank {rank}"
        return None

    def build(self, cell):
        cell.module = self.build_module(cell.case, cell.arrays, self.module_for(cell.case))
        for name in cell.frozen:
            getattr(cell.module, name).requires_grad_(False)

    def forward(self, cell, x, mode):
        cell.module.train(mode == "train")
        cell.x = self.prepare(self.tensor(x, cell.dtype)).requires_grad_(True)
        cell.y = self.call(cell, cell.x)
        return cell.y

    def backward(self, cell, grad_output, retain):
        cell.x.grad = None
        cell.module.zero_grad(set_to_none=True)
        cell.y.backward(self.tensor(grad_output, cell.dtype), retain_graph=retain)
        return cell.x.grad, {n: getattr(cell.module, n).grad for n in cell.trainable}

    def sgd_step(self, cell, lr):
        if cell.trainable:
            self.torch.optim.SGD([getattr(cell.module, n) for n in cell.trainable], lr=lr).step()

    def state(self, cell):
        m = cell.module
        names = ("running_mean", "running_var", "num_batches_tracked", "weight", "bias")
        return {n: v for n in names if (v := getattr(m, n, None)) is not None}


class BatchNorm1d(_TorchModule):
    name, module_name, ranks = "torch.nn.BatchNorm1d", "BatchNorm1d", (2, 3)


class BatchNorm2d(_TorchModule):
    name, module_name, ranks = "torch.nn.BatchNorm2d", "BatchNorm2d", (4,)


class BatchNorm3d(_TorchModule):
    name, module_name, ranks = "torch.nn.BatchNorm3d", "BatchNorm3d", (5,)


class BatchNorm2dChannelsLast(BatchNorm2d):
    """BatchNorm2d fed ``torch.channels_last`` (NHWC in memory, NCHW logically):
    a different CPU kernel path (``batch_norm_cpu_channels_last`` in
    ``aten/src/ATen/native/cpu/batch_norm_kernel.cpp``), same semantics.

    ``grad_output`` is passed as the catalogue gives it (contiguous NCHW), as
    it arrives from a loss computed on a reshaped or permuted output, so the
    backward sees mixed memory formats.
    """

    name = "torch.nn.BatchNorm2d[channels_last]"
    def prepare(self, x):
        return x.contiguous(memory_format=self.torch.channels_last)

