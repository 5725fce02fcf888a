"""Adapters for ``torch.nn.BatchNorm1d/2d/3d`` (``torch/nn/modules/batchnorm.py``).

Idioms translated:
* mode ``train`` -> ``module.train()``; ``eval`` and ``train_global_stats``
  -> ``module.eval()`` (under autograd the latter still yields gradients).
* ``layer.frozen`` -> ``parameter.requires_grad_(False)`` and the parameter
  left out of ``torch.optim.SGD``.
* ``sgd_step`` -> ``torch.optim.SGD(params, lr).step()`` (plain SGD).
* ``backward`` -> ``output.backward(grad_output, retain_graph=case.backward_follows(i))`` after
  clearing every ``.grad`` (gradients are not accumulated across steps).
"""

from __future__ import annotations

from bnconform.catalogue import Backward, Case, Forward, SgdStep

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

    def call(self, module, x):
        """Run the module (hook for compiled execution paths)."""
        return module(x)

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

    def run(self, case, arrays):
        torch, L = self.torch, case.layer
        module = self.build_module(case, arrays, self.module_for(case))
        for name in L.frozen:
            getattr(module, name).requires_grad_(False)
        trainable = [p for p in module.parameters() if p.requires_grad]
        obs, x, y = {}, None, None
        for i, step in enumerate(case.steps):
            if isinstance(step, Forward):
                module.train(step.mode == "train")
                x = self.prepare(self.tensor(arrays.batches[step.batch], case.input.dtype)).requires_grad_(True)
                y = self.call(module, x)
                obs[(i, "output")] = self.numpy(y)
            elif isinstance(step, Backward):
                x.grad = None
                module.zero_grad(set_to_none=True)
                y.backward(self.tensor(arrays.grad_outputs[i], case.input.dtype), retain_graph=case.backward_follows(i))
                obs[(i, "grad_input")] = self.numpy(x.grad)
                if L.affine:
                    for name in ("weight", "bias"):
                        grad = getattr(module, name).grad
                        if grad is not None:
                            obs[(i, f"grad_{name}")] = self.numpy(grad)
            elif isinstance(step, SgdStep) and trainable:
                torch.optim.SGD(trainable, lr=step.lr).step()
            if L.track_running_stats:
                obs[(i, "running_mean")] = self.numpy(module.running_mean)
                obs[(i, "running_var")] = self.numpy(module.running_var)
                obs[(i, "num_batches_tracked")] = self.numpy(module.num_batches_tracked)
            if L.affine:
                obs[(i, "weight")] = self.numpy(module.weight)
                obs[(i, "bias")] = self.numpy(module.bias)
        return obs


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

