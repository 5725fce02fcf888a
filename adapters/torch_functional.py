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

from bnconform.catalogue import OBSERVABLES, Backward, Case, Forward, SgdStep

from ._torch import TorchAdapter


class FunctionalBatchNorm(TorchAdapter):
    name = "torch.nn.functional.batch_norm"
    observables = frozenset(OBSERVABLES) - {"num_batches_tracked"}

    def batch_norm(self, F):
        """The callable under test (hook for compiled execution paths)."""
        return F.batch_norm

    def capabilities(self, case: Case) -> str | None:
        if case.uses_cumulative_average:
            return ("F.batch_norm takes a float momentum: the cumulative average (momentum=None) "
                    "is implemented by nn.BatchNorm's forward, not by the functional")
        return super().capabilities(case)

    def run(self, case, arrays):
        torch, L = self.torch, case.layer
        F = torch.nn.functional
        pdt = arrays.param_dtype
        rm = self.tensor(arrays.init["running_mean"], pdt) if L.track_running_stats else None
        rv = self.tensor(arrays.init["running_var"], pdt) if L.track_running_stats else None
        params = {}
        if L.affine:
            for name in ("weight", "bias"):
                params[name] = self.tensor(arrays.init[name], pdt).requires_grad_(name not in L.frozen)
        trainable = [p for p in params.values() if p.requires_grad]
        obs, x, y = {}, None, None
        for i, step in enumerate(case.steps):
            if isinstance(step, Forward):
                x = self.tensor(arrays.batches[step.batch], case.input.dtype).requires_grad_(True)
                training = step.mode == "train" or not L.track_running_stats
                y = self.batch_norm(F)(x, rm, rv, params.get("weight"), params.get("bias"),
                                 training=training, momentum=L.momentum if L.momentum is not None else 0.1,
                                 eps=L.eps)
                obs[(i, "output")] = self.numpy(y)
            elif isinstance(step, Backward):
                x.grad = None
                for p in params.values():
                    p.grad = None
                y.backward(self.tensor(arrays.grad_outputs[i], case.input.dtype), retain_graph=case.backward_follows(i))
                obs[(i, "grad_input")] = self.numpy(x.grad)
                for name, p in params.items():
                    if p.grad is not None:
                        obs[(i, f"grad_{name}")] = self.numpy(p.grad)
            elif isinstance(step, SgdStep) and trainable:
                torch.optim.SGD(trainable, lr=step.lr).step()
            if rm is not None:
                obs[(i, "running_mean")] = self.numpy(rm)
                obs[(i, "running_var")] = self.numpy(rv)
            for name, p in params.items():
                obs[(i, name)] = self.numpy(p)
        return obs
