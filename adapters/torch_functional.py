"""Adapter for ``torch.nn.functional.batch_norm`` (``torch/nn/functional.py``).

The functional takes the running buffers (or ``None``), ``training``, a float
``momentum`` and ``eps``; it has no ``num_batches_tracked`` counter and no
cumulative average (``momentum=None`` is resolved by ``nn.BatchNorm`` before it
calls the functional), so those are not expressible here.

Idioms translated: ``train`` -> ``training=True``; ``eval`` and
``train_global_stats`` -> ``training=False``; ``track_running_stats: false``
-> ``running_mean=running_var=None`` with ``training=True`` (what
``nn.BatchNorm`` does); frozen parameters -> ``requires_grad=False`` leaves;
``sgd_step`` -> ``torch.optim.SGD``.
"""

from __future__ import annotations

from bnconform.catalogue import OBSERVABLES, Case
from bnconform.drive import uses_batch_stats

from ._torch import LeafParameters, TorchAdapter


class FunctionalBatchNorm(LeafParameters, TorchAdapter):
    name = "torch.nn.functional.batch_norm"
    observables = frozenset(OBSERVABLES) - {"num_batches_tracked"}

    def batch_norm(self, F):
        """The callable under test, fetched once per cell (hook for compiled execution paths)."""
        return F.batch_norm

    def capabilities(self, case: Case) -> str | None:
        if case.uses_cumulative_average:
            return ("F.batch_norm takes a float momentum: the cumulative average (momentum=None) "
                    "is implemented by nn.BatchNorm's forward, not by the functional")
        return super().capabilities(case)

    def build(self, cell):
        L, pdt = cell.case.layer, cell.param_dtype
        cell.batch_norm = self.batch_norm(self.torch.nn.functional)
        cell.running = {n: self.tensor(cell.arrays.init[n], pdt) for n in ("running_mean", "running_var")
                        if L.track_running_stats}
        cell.params = {n: self.tensor(cell.arrays.init[n], pdt).requires_grad_(n in cell.trainable)
                       for n in ("weight", "bias") if L.affine}

    def forward(self, cell, x, mode):
        L = cell.case.layer
        cell.x = self.tensor(x, cell.dtype).requires_grad_(True)
        cell.y = cell.batch_norm(cell.x, cell.running.get("running_mean"), cell.running.get("running_var"),
                                 cell.params.get("weight"), cell.params.get("bias"),
                                 training=uses_batch_stats(cell.case, mode),
                                 momentum=L.momentum if L.momentum is not None else 0.1, eps=L.eps)
        return cell.y

    def state(self, cell):
        return {**cell.running, **cell.params}
