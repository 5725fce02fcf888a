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

    @staticmethod
    def numpy(t) -> np.ndarray:
        """torch tensor -> numpy; bfloat16 becomes float32 (exact), per the adapter protocol."""
        t = t.detach().cpu()
        if str(t.dtype) == "torch.bfloat16":
            t = t.float()
        return t.numpy().copy()
