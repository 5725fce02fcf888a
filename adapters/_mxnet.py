"""Shared translation of the MXNet 1.9.1 adapters (:mod:`adapters.mxnet_ndarray`,
:mod:`adapters.mxnet_gluon`) to the step interpreter's hooks; no judging here.

* ``momentum`` -> the decay ``1 - m`` (``BatchNormParam::momentum``).
* ``is_train``: batch statistics need training mode; ``eval`` of a layer with
  ``track_running_stats: false`` runs in training mode too (MXNet has no such
  switch; PyTorch's behaviour).
* An input with a zero-size dimension needs NumPy shape semantics in MXNet 1.x
  (legacy shapes read 0 as "unknown"): such a cell runs under
  ``mx.util.np_shape(True)``.
* ``sgd_step`` of the operator adapters -> ``mx.optimizer.SGD`` (momentum 0,
  wd 0, rescale_grad 1) through ``mx.optimizer.get_updater``, the imperative
  training idiom (``src/operator/optimizer_op-inl.h``).
"""

from __future__ import annotations

import numpy as np

from bnconform.adapter import Adapter
from bnconform.catalogue import Case


class MXNetBase(Adapter):
    """NDArray conversion, the cell scope, capabilities and SGD shared by the MXNet rows."""

    @property
    def mx(self):
        import mxnet

        return mxnet

    def capabilities(self, case: Case) -> str | None:
        if case.uses_cumulative_average:
            return ("MXNet BatchNorm's momentum is a float decay (BatchNormParam::momentum); it has no "
                    "cumulative average (momentum=None) and no batch counter to build one from")
        if case.input.dtype == "bfloat16":
            return ("MXNet 1.9.1's Python NDArray has no bfloat16 dtype (numpy has none: creating or reading "
                    "a bfloat16 NDArray raises 'data type bfloat16 not understood'); bfloat16 exists only "
                    "inside AMP-converted oneDNN graphs")
        return None

    @staticmethod
    def global_stats(case: Case, mode: str) -> bool:
        """``use_global_stats`` for a forward in ``mode``: the running statistics in ``train_global_stats``,
        except without tracked statistics, where every forward normalises with the batch statistics (the
        catalogue's semantics; an untracked ``train_global_stats`` forward with ``use_global_stats=True``
        normalised with the initial moving statistics: found by bnconform explore)."""
        return mode == "train_global_stats" and case.layer.track_running_stats

    @staticmethod
    def training(case: Case, mode: str) -> bool:
        """is_train for a forward in ``mode``: batch statistics need training mode."""
        return mode != "eval" or not case.layer.track_running_stats

    def nd(self, a: np.ndarray, dtype: str):
        """numpy -> NDArray of ``dtype`` on the CPU (a copy)."""
        return self.mx.nd.array(np.ascontiguousarray(a), dtype=dtype, ctx=self.mx.cpu())

    def to_numpy(self, a) -> np.ndarray:
        return a.asnumpy()

    def scope(self, case):
        """NumPy shape semantics for zero-size inputs (MXNet 1.x legacy shapes read 0 as unknown)."""
        if 0 in tuple(case.input.shape):
            return self.mx.util.np_shape(True)
        return super().scope(case)

    def sgd_update(self, cell, lr: float, pairs) -> None:
        """``mx.optimizer.SGD`` (momentum 0, wd 0, rescale_grad 1) through
        ``mx.optimizer.get_updater``, one per cell; ``pairs``: ``(index, grad, weight)``."""
        mx = self.mx
        if getattr(cell, "updater", None) is None:
            cell.optimizer = mx.optimizer.SGD(learning_rate=lr, momentum=0.0, wd=0.0, rescale_grad=1.0)
            cell.updater = mx.optimizer.get_updater(cell.optimizer)
        cell.optimizer.set_learning_rate(lr)
        for index, grad, weight in pairs:
            cell.updater(index, grad, weight)


class NDArrayHooks(MXNetBase):
    """``mx.nd.BatchNorm`` called imperatively under ``mx.autograd``: ``attach_grad``
    (``grad_req='write'``) on the input and the trainable parameters, the forward
    recorded with ``train_mode`` = is_train, ``y.backward(grad_output,
    retain_graph, train_mode)``."""

    #: Keep the operator's DEFAULT fix_gamma=True even for a learnable gamma.
    default_fix_gamma = False

    def build(self, cell):
        rm, rv, gamma, beta = (self.nd(cell.init(n), cell.param_dtype)  # gamma 1, beta 0 without affine
                               for n in ("running_mean", "running_var", "weight", "bias"))
        cell.rm, cell.rv, cell.gamma, cell.beta = rm, rv, gamma, beta
        cell.params = {"weight": gamma, "bias": beta} if cell.case.layer.affine else {}
        for n in cell.trainable:
            cell.params[n].attach_grad()  # grad_req='write': every backward overwrites

    def forward(self, cell, x, mode):
        mx, case = self.mx, cell.case
        cell.train = self.training(case, mode)
        cell.x = self.nd(x, cell.dtype)
        cell.x.attach_grad()
        with mx.autograd.record(train_mode=cell.train):
            cell.y = mx.nd.BatchNorm(cell.x, cell.gamma, cell.beta, cell.rm, cell.rv, eps=case.layer.eps,
                                     momentum=case.layer.decay, axis=case.input.axis,
                                     fix_gamma=self.default_fix_gamma or not case.layer.affine,
                                     use_global_stats=self.global_stats(case, mode))
        return cell.y

    def backward(self, cell, grad_output, retain):
        cell.y.backward(self.nd(grad_output, cell.dtype), retain_graph=retain, train_mode=cell.train)
        return cell.x.grad, {n: cell.params[n].grad for n in cell.trainable}

    def sgd_step(self, cell, lr):
        if cell.trainable:
            self.sgd_update(cell, lr, [(i, cell.params[n].grad, cell.params[n])
                                       for i, n in enumerate(("weight", "bias")) if n in cell.trainable])

    def state(self, cell):
        return {"running_mean": cell.rm, "running_var": cell.rv, **cell.params}


class SymbolHooks(MXNetBase):
    """``mx.sym.BatchNorm`` bound to an executor: ``forward(is_train=...)`` /
    ``backward(out_grads, is_train=...)`` over one set of argument, gradient
    (``grad_req='write'``, ``'null'`` for frozen parameters) and auxiliary
    arrays; each ``use_global_stats`` value (a symbol attribute) gets its own
    executor bound to those same arrays."""

    ARG = {"weight": "gamma", "bias": "beta"}

    def build(self, cell):
        mx, pdt, dt, C = self.mx, cell.param_dtype, cell.dtype, cell.case.layer.num_features
        shape = tuple(cell.case.input.shape)
        cell.args = {"data": mx.nd.zeros(shape, dtype=dt), "gamma": self.nd(cell.init("weight"), pdt),
                     "beta": self.nd(cell.init("bias"), pdt)}
        cell.aux = {"moving_mean": self.nd(cell.init("running_mean"), pdt),
                    "moving_var": self.nd(cell.init("running_var"), pdt)}
        cell.grad_req = {"data": "write", "gamma": "null", "beta": "null"}
        cell.grads = {"data": mx.nd.zeros(shape, dtype=dt)}
        for n in cell.trainable:
            cell.grad_req[self.ARG[n]] = "write"
            cell.grads[self.ARG[n]] = mx.nd.zeros((C,), dtype=pdt)
        cell.executors = {}

    def executor(self, cell, global_stats: bool):
        """The executor of ``use_global_stats=global_stats`` over the cell's shared arrays."""
        mx, case = self.mx, cell.case
        if global_stats not in cell.executors:
            sym = mx.sym.BatchNorm(
                data=mx.sym.var("data"), gamma=mx.sym.var("gamma"), beta=mx.sym.var("beta"),
                moving_mean=mx.sym.var("moving_mean"), moving_var=mx.sym.var("moving_var"),
                eps=case.layer.eps, momentum=case.layer.decay, fix_gamma=not case.layer.affine,
                use_global_stats=global_stats, axis=case.input.axis, name="bn")
            cell.executors[global_stats] = sym.bind(mx.cpu(), args=cell.args, args_grad=cell.grads,
                                                    grad_req=cell.grad_req, aux_states=cell.aux)
        return cell.executors[global_stats]

    def forward(self, cell, x, mode):
        cell.train = self.training(cell.case, mode)
        cell.exe = self.executor(cell, self.global_stats(cell.case, mode))
        cell.args["data"][:] = self.nd(x, cell.dtype)
        return cell.exe.forward(is_train=cell.train)[0]

    def backward(self, cell, grad_output, retain):
        cell.exe.backward(out_grads=[self.nd(grad_output, cell.dtype)], is_train=cell.train)
        return cell.grads["data"], {n: cell.grads[self.ARG[n]] for n in cell.trainable}

    def sgd_step(self, cell, lr):
        if cell.trainable:
            self.sgd_update(cell, lr, [(i, cell.grads[self.ARG[n]], cell.args[self.ARG[n]])
                                       for i, n in enumerate(("weight", "bias")) if n in cell.trainable])

    def state(self, cell):
        return {"running_mean": cell.aux["moving_mean"], "running_var": cell.aux["moving_var"],
                "weight": cell.args["gamma"], "bias": cell.args["beta"]}
