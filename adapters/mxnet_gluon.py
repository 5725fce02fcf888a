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
        return None

    def run(self, case, arrays):
        mx, L = self.mx, case.layer
        autograd, nn = mx.autograd, mx.gluon.nn
        pdt, dt = arrays.param_dtype, case.input.dtype
        global_stats = any(isinstance(s, Forward) and s.mode == "train_global_stats" for s in case.steps)
        net = nn.BatchNorm(axis=case.input.axis, momentum=self.momentum(case), epsilon=L.eps,
                           center=L.affine, scale=L.affine, use_global_stats=global_stats,
                           in_channels=L.num_features)
        net.initialize(ctx=mx.cpu())
        net.cast(dt)  # float16 -> parameters stay float32 (_BatchNorm.cast)
        net.running_mean.set_data(self.nd(arrays.init["running_mean"], pdt))
        net.running_var.set_data(self.nd(arrays.init["running_var"], pdt))
        params = {}
        if L.affine:
            params = {"weight": net.gamma, "bias": net.beta}
            for name, p in params.items():
                p.set_data(self.nd(arrays.init[name], pdt))
                if name in L.frozen:
                    p.lr_mult = 0.0
        if self.hybridize:
            net.hybridize()
        trainer = None
        obs, x, y, train = {}, None, None, False
        for i, step in enumerate(case.steps):
            if isinstance(step, Forward):
                train = self.training(case, step.mode)
                with self.shape_scope(case.input.shape):
                    x = self.nd(arrays.batches[step.batch], dt)
                    x.attach_grad()
                    with autograd.record(train_mode=train):
                        y = net(x)
                    obs[(i, "output")] = self.numpy(y)
            elif isinstance(step, Backward):
                y.backward(self.nd(arrays.grad_outputs[i], dt), retain_graph=case.backward_follows(i),
                           train_mode=train)
                obs[(i, "grad_input")] = self.numpy(x.grad)
                for name, p in params.items():
                    if name not in L.frozen:  # a frozen parameter's gradient is not compared
                        obs[(i, f"grad_{name}")] = self.numpy(p.grad())
            elif isinstance(step, SgdStep) and params:
                if trainer is None:
                    trainer = mx.gluon.Trainer(net.collect_params(), "sgd",
                                               {"learning_rate": step.lr, "momentum": 0.0, "wd": 0.0})
                trainer.set_learning_rate(step.lr)
                trainer.step(1)
            if L.track_running_stats:
                obs[(i, "running_mean")] = self.numpy(net.running_mean.data())
                obs[(i, "running_var")] = self.numpy(net.running_var.data())
            for name, p in params.items():
                obs[(i, name)] = self.numpy(p.data())
        return obs


class GluonBatchNormHybrid(GluonBatchNorm):
    """The same layer after ``net.hybridize()`` (a ``CachedOp`` graph), oneDNN path."""

    name, hybridize = "mxnet.gluon.nn.BatchNorm[hybridized, onednn]", True


class GluonBatchNormNative(GluonBatchNorm):
    """Imperative Gluon layer on the native CPU kernel (``MXNET_MKLDNN_ENABLED=0``)."""

    name, path = "mxnet.gluon.nn.BatchNorm[native]", "native"


class GluonBatchNormHybridNative(GluonBatchNormHybrid):
    """Hybridized Gluon layer on the native CPU kernel (``MXNET_MKLDNN_ENABLED=0``)."""

    name, path = "mxnet.gluon.nn.BatchNorm[hybridized, native]", "native"
