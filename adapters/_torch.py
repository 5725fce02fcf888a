"""Shared translation helpers for the PyTorch adapters (no judging here).

Semantics relied on (torch 2.13.0):
* ``torch/nn/modules/batchnorm.py`` ``_BatchNorm.forward``: in training with
  ``track_running_stats`` the buffer ``num_batches_tracked`` is incremented and
  ``momentum=None`` uses the factor ``1/num_batches_tracked``; with no running
  buffers the batch statistics are used in every mode.
* ``aten/src/ATen/native/Normalization.cpp`` (``batch_norm_cpu_update_stats_template``):
  the running variance is updated with the unbiased batch variance
  ``var * n / (n - 1)``; normalisation uses the biased one.
"""

from __future__ import annotations

import numpy as np

from bnconform.adapter import Adapter
from bnconform.catalogue import Case

#: The torch.nn module class for each input rank.
MODULE_BY_RANK = {2: "BatchNorm1d", 3: "BatchNorm1d", 4: "BatchNorm2d", 5: "BatchNorm3d"}

_DTYPES = {"float64": "float64", "float32": "float32", "float16": "float16", "bfloat16": "bfloat16"}


class TorchAdapter(Adapter):
    """Base of the torch adapters: tensors in, numpy out."""

    framework = "torch"

    @property
    def torch(self):
        import torch

        return torch

    def available(self) -> str | None:
        if self.device == "cuda" and not self.torch.cuda.is_available():
            return "no CUDA device visible to torch on this machine"
        return None

    def capabilities(self, case: Case) -> str | None:
        if case.input.axis != 1:
            return ("torch BatchNorm normalises over dim 1 only (channels-first); "
                    f"channel_axis={case.input.channel_axis} needs a permute, a different program")
        return None

    def tensor(self, a: np.ndarray, dtype: str):
        """numpy (storage dtype) -> torch tensor of ``dtype`` on this adapter's device."""
        torch = self.torch
        # A copy: the tensor must never alias the caller's array (in-place
        # running-stat updates would write into it).
        return torch.tensor(np.ascontiguousarray(a)).to(device=self.device, dtype=getattr(torch, _DTYPES[dtype]))

    def build_module(self, case: Case, arrays, module_name: str):
        """``torch.nn.<module_name>`` configured from ``case.layer``, with the case's
        initial running statistics and affine parameters (parameter dtype)."""
        torch, L, pdt = self.torch, case.layer, arrays.param_dtype
        module = getattr(torch.nn, module_name)(
            L.num_features, eps=L.eps, momentum=L.momentum, affine=L.affine,
            track_running_stats=L.track_running_stats, device=self.device, dtype=getattr(torch, pdt))
        with torch.no_grad():
            if L.track_running_stats:
                module.running_mean.copy_(self.tensor(arrays.init["running_mean"], pdt))
                module.running_var.copy_(self.tensor(arrays.init["running_var"], pdt))
            if L.affine:
                module.weight.copy_(self.tensor(arrays.init["weight"], pdt))
                module.bias.copy_(self.tensor(arrays.init["bias"], pdt))
        return module

    def to_numpy(self, t) -> np.ndarray:
        """torch tensor -> numpy; bfloat16 becomes float32 (exact), per the adapter protocol.
        NumPy (what an exported graph's runtime returns) passes through."""
        if isinstance(t, np.ndarray):
            return t
        t = t.detach().cpu()
        if str(t.dtype) == "torch.bfloat16":
            t = t.float()
        return t.numpy()


class LeafParameters:
    """Interpreter hooks for torch rows whose gamma/beta are explicit leaf tensors in
    ``cell.params`` (``{"weight": (C,), "bias": (C,)}``, ``requires_grad`` only for the
    case's trainable ones) that no ``nn.Module`` owns: ``F.batch_norm`` and
    ``torch.func.functional_call``. The row's ``forward`` sets ``cell.x`` (a leaf that
    requires grad) and ``cell.y``."""

    def backward(self, cell, grad_output, retain):
        cell.x.grad = None
        for p in cell.params.values():
            p.grad = None
        cell.y.backward(self.tensor(grad_output, cell.dtype), retain_graph=retain)
        return cell.x.grad, {n: cell.params[n].grad for n in cell.trainable}

    def sgd_step(self, cell, lr):
        if cell.trainable:
            self.torch.optim.SGD([cell.params[n] for n in cell.trainable], lr=lr).step()
