"""Adapters for ``mxnet.gluon.nn.BatchNorm`` (MXNet 1.9.1,
``python/mxnet/gluon/nn/basic_layers.py`` ``_BatchNorm``), imperative and
hybridized.

Semantics relied on (besides the operator's, see :mod:`adapters.mxnet_ndarray`):

* ``_BatchNorm.__init__``: ``momentum`` (decay, default 0.9), ``epsilon``
  (default 1e-5), ``axis``, ``center``/``scale``, ``use_global_stats``; it
  calls the ``BatchNorm`` operator with ``fix_gamma = not scale``.
  ``scale=False`` also gives gamma ``grad_req='null'``; ``center=False`` gives
  beta ``grad_req='null'`` (it stays 0). ``running_mean``/``running_var`` are
  parameters with ``grad_req='null'``.
* ``_BatchNorm.cast``: float16 is cast as float32 (parameters stay float32
  for float16 data).
* ``gluon.Trainer.step(batch_size)`` rescales gradients by ``1/batch_size``;
  the optimizer reads each parameter's ``lr_mult``
  (``python/mxnet/gluon/trainer.py``, ``python/mxnet/optimizer/optimizer.py``
  ``Optimizer._get_lrs``).

Idioms translated:

* ``momentum`` -> ``momentum = 1 - m``; ``eps`` -> ``epsilon``; ``axis`` = the
  case's channel axis; ``affine: false`` -> ``center=False, scale=False``.
* mode ``train`` -> ``autograd.record(train_mode=True)``; ``eval`` ->
  ``autograd.record(train_mode=False)``; ``train_global_stats`` -> the layer
  built with ``use_global_stats=True`` and called under
  ``record(train_mode=True)``. ``use_global_stats`` is fixed at construction,
  so a case mixing ``train`` and ``train_global_stats`` steps is unsupported.
  ``track_running_stats: false`` -> every forward in training mode.
* ``layer.frozen`` -> ``param.lr_mult = 0`` — the Gluon idiom of the
  practitioners' thread (``beta.lr_mult = 0``): the gradient is still
  computed (and reported as the framework computes it, not compared), the
  ``Trainer`` applies ``lr * 0``. (``grad_req='null'`` is the other idiom;
  the operator adapters use it.)
* ``sgd_step`` -> ``gluon.Trainer(params, 'sgd', {'learning_rate': lr,
  'momentum': 0, 'wd': 0}).step(1)`` (``batch_size=1``: no rescaling), the
  learning rate set per step with ``trainer.set_learning_rate``.
"""

from __future__ import annotations

from bnconform.catalogue import Backward, Case, Forward, SgdStep

from .mxnet_ndarray import MXNetAdapter


class GluonBatchNorm(MXNetAdapter):
    """``mxnet.gluon.nn.BatchNorm`` called imperatively (a ``Block`` call), oneDNN path."""

    name = "mxnet.gluon.nn.BatchNorm[onednn]"
    hybridize = False

    def capabilities(self, case: Case) -> str | None:
        reason = super().capabilities(case)
        if reason:
            return reason
        modes = {s.mode for s in case.steps if isinstance(s, Forward)}
        if "train_global_stats" in modes and "train" in modes and case.layer.track_running_stats:
            return ("gluon.nn.BatchNorm fixes use_global_stats at construction: one layer cannot normalise "
                    "with batch statistics in one training step and with the running statistics in another")
        fresh = False
        for step in case.steps:
            if isinstance(step, Backward):
                fresh = True
            elif isinstance(step, SgdStep):
                if not fresh:
                    return ("gluon.Trainer.step refuses a second step without a backward in between (measured: "
                            "UserWarning 'Gradient of Parameter ... has not been updated by backward since last "
                            "`step`', raised; ignore_stale_grad=True would skip the update instead)")
                fresh = False
        return None

    def build(self, cell):
        mx, L, pdt = self.mx, cell.case.layer, cell.param_dtype
        net = cell.net = mx.gluon.nn.BatchNorm(
            axis=cell.case.input.axis, momentum=cell.case.layer.decay, epsilon=L.eps, center=L.affine,
            scale=L.affine, use_global_stats=any(self.global_stats(cell.case, m) for m in cell.modes),
            in_channels=L.num_features)
        net.initialize(ctx=mx.cpu())
        net.cast(cell.dtype)  # float16 -> parameters stay float32 (_BatchNorm.cast)
        net.running_mean.set_data(self.nd(cell.init("running_mean"), pdt))
        net.running_var.set_data(self.nd(cell.init("running_var"), pdt))
        cell.params = {"weight": net.gamma, "bias": net.beta} if L.affine else {}
        for name, p in cell.params.items():
            p.set_data(self.nd(cell.init(name), pdt))
            if name in cell.frozen:
                p.lr_mult = 0.0
        if self.hybridize:
            net.hybridize()
        cell.trainer = None

    def forward(self, cell, x, mode):
        cell.train = self.training(cell.case, mode)
        cell.x = self.nd(x, cell.dtype)
        cell.x.attach_grad()
        with self.mx.autograd.record(train_mode=cell.train):
            cell.y = cell.net(cell.x)
        return cell.y

    def backward(self, cell, grad_output, retain):
        cell.y.backward(self.nd(grad_output, cell.dtype), retain_graph=retain, train_mode=cell.train)
        return cell.x.grad, {n: cell.params[n].grad() for n in cell.trainable}

    def sgd_step(self, cell, lr):  # frozen parameters: lr_mult = 0 inside the Trainer (also when all are)
        if cell.trainer is None:
            cell.trainer = self.mx.gluon.Trainer(cell.net.collect_params(), "sgd",
                                                 {"learning_rate": lr, "momentum": 0.0, "wd": 0.0})
        cell.trainer.set_learning_rate(lr)
        cell.trainer.step(1)

    def state(self, cell):
        return {"running_mean": cell.net.running_mean.data(), "running_var": cell.net.running_var.data(),
                **{name: p.data() for name, p in cell.params.items()}}


class GluonBatchNormHybrid(GluonBatchNorm):
    """The same layer after ``net.hybridize()`` (a ``CachedOp`` graph), oneDNN path."""

    name, hybridize = "mxnet.gluon.nn.BatchNorm[hybridized, onednn]", True


class GluonBatchNormNative(GluonBatchNorm):
    """Imperative Gluon layer on the native CPU kernel (``MXNET_MKLDNN_ENABLED=0``)."""

    name, path = "mxnet.gluon.nn.BatchNorm[native]", "native"


class GluonBatchNormHybridNative(GluonBatchNormHybrid):
    """Hybridized Gluon layer on the native CPU kernel (``MXNET_MKLDNN_ENABLED=0``)."""

    name, path = "mxnet.gluon.nn.BatchNorm[hybridized, native]", "native"
