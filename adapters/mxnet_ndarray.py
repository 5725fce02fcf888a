"""Adapters for the MXNet 1.9.1 ``BatchNorm`` operator: imperative ``mx.nd.BatchNorm``
under ``mx.autograd`` and symbolic ``mx.sym.BatchNorm`` through a bound executor.

Semantics relied on (apache/mxnet tag 1.9.1, verified on mxnet==1.9.1 with numpy 1.23.5):

* ``src/operator/nn/batch_norm-inl.h`` (``BatchNormParam``): ``momentum`` is the
  DECAY (weight of the old running value), default 0.9, and is a C++ ``float``;
  ``eps`` (double) defaults to 1e-3; ``fix_gamma`` defaults to True;
  ``use_global_stats`` False; ``axis`` 1 (any axis accepted).
* ``src/operator/nn/batch_norm.cc`` ``BatchNormForwardImpl`` (native CPU path):
  in training (``ctx.is_train && !use_global_stats``) the batch mean and the
  two-pass BIASED variance ``sum((x - mean)^2) / m`` are computed and only SAVED
  (as mean and invstd outputs); the running buffers are not touched.
  ``BatchNormBackwardImpl`` recovers the variance from invstd and applies the
  EMA ``running = running * momentum + batch * (1 - momentum)`` — in the
  BACKWARD pass, once per backward call. So a training forward without a
  backward leaves the running statistics untouched (apache/mxnet#14357,
  design from apache/mxnet#853 "moving aux to backward").
* ``src/operator/nn/mkldnn/mkldnn_batch_norm-inl.h`` (oneDNN path, float32 only,
  selected by ``SupportMKLDNNBN`` in batch_norm.cc unless
  ``MXNET_MKLDNN_ENABLED=0``): same contract — oneDNN's (biased) variance is
  saved as invstd in forward, the EMA runs in ``MKLDNNBatchNormBackwardImpl``.
* ``use_global_stats=True`` (or ``is_train=False``): normalise with the running
  statistics; backward is the scale-shift gradient ``dx = g * w * invstd``;
  gamma and beta still get gradients; no update.
* ``fix_gamma=True``: gamma is treated as 1 (forward writes 1.0 into it) and
  its gradient is written as 0. Used here only for ``affine: false``.
* float16 input keeps gamma/beta/moving stats in float32 (``BatchNormType``).
* ``src/operator/optimizer_op-inl.h`` ``SGDParam``: ``lr`` is a C++ ``float``.
* MXNet has no batch counter: ``num_batches_tracked`` is not observable.

Idioms translated:

* ``momentum`` -> ``momentum = 1 - m`` (decay); ``eps`` passed explicitly;
  ``axis`` = the case's channel axis.
* ``affine`` -> ``fix_gamma=False`` with learnable gamma/beta
  (``attach_grad()``); ``affine: false`` -> ``fix_gamma=True``, gamma = ones,
  beta = zeros with no gradient attached.
* mode ``train`` -> ``autograd.record(train_mode=True)``; ``eval`` ->
  ``autograd.record(train_mode=False)`` (recorded so that a later backward
  works; the forward is the same as plain inference); ``train_global_stats``
  -> ``use_global_stats=True`` under ``record(train_mode=True)``.
  ``track_running_stats: false`` (MXNet has no such switch) -> every forward
  in training mode, as PyTorch implements it; the moving buffers are scratch
  and not reported.
* ``backward`` -> ``y.backward(grad_output, retain_graph=..., train_mode=<mode
  of the forward>)``; ``grad_req='write'``, so gradients are fresh.
* ``layer.frozen`` -> no gradient buffer attached (``grad_req='null'``) and
  the parameter is not given to the optimizer.
* ``sgd_step`` -> ``mx.optimizer.SGD`` (momentum 0, wd 0, rescale_grad 1)
  through ``mx.optimizer.get_updater`` — the imperative training idiom.
* An input with a zero-size dimension needs NumPy shape semantics in MXNet 1.x
  (legacy shapes read 0 as "unknown"): such a forward runs under
  ``mx.util.np_shape(True)``.

Execution paths: every adapter has a ``[onednn]`` row (MXNet's default CPU
path; group ``mxnet``) and a ``[native]`` row (``MXNET_MKLDNN_ENABLED=0``,
which MXNet reads once, so it must be set before the process imports mxnet;
group ``mxnet.native``). A row whose path is not the process's is skipped as
unavailable. oneDNN only takes float32 inputs (``SupportMKLDNNBN``): float16
and float64 cases run the native kernel in both rows.
"""

from __future__ import annotations

import os
from typing import ClassVar

import numpy as np

from bnconform.adapter import Adapter
from bnconform.catalogue import OBSERVABLES, Backward, Case, Forward, SgdStep

def mkldnn_enabled() -> bool:
    """Whether MXNet takes its oneDNN (MKLDNN) path in this process:
    ``MXNET_MKLDNN_ENABLED`` unset or true (dmlc::GetEnv, read once by MXNet)."""
    return os.environ.get("MXNET_MKLDNN_ENABLED", "1").strip().lower() not in ("0", "false")


def path_tag() -> str:
    return "onednn" if mkldnn_enabled() else "native"


class MXNetAdapter(Adapter):
    """Shared translation for every MXNet adapter (no judging here).

    ``path``: the CPU execution path the row stands for, ``"onednn"`` (MXNet's
    default) or ``"native"`` (``MXNET_MKLDNN_ENABLED=0`` set before mxnet is
    imported). A row whose path is not the one of this process is unavailable
    (skipped with the reason): the ``mxnet`` and ``mxnet-native`` tox envs each
    run their own rows.
    """

    framework = "mxnet"
    path: ClassVar[str] = "onednn"
    observables = frozenset(OBSERVABLES) - {"num_batches_tracked"}

    def available(self) -> str | None:
        if self.path != path_tag():
            want = "MXNET_MKLDNN_ENABLED=0" if self.path == "native" else "MXNET_MKLDNN_ENABLED unset (or 1)"
            return (f"this row is MXNet's {self.path} path: it needs {want} before mxnet is imported; this "
                    f"process runs the {path_tag()} path (tox env {'mxnet-native' if self.path == 'native' else 'mxnet'})")
        if self.path == "onednn" and not self.mx.runtime.Features().is_enabled("MKLDNN"):
            return "this mxnet build has no oneDNN (MKLDNN) support"
        return None

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
    def momentum(case: Case) -> float:
        """MXNet decay = 1 - new-batch weight (the value is unused when no update can happen)."""
        m = case.layer.momentum
        return 1.0 - (m if m is not None else 0.1)

    @staticmethod
    def training(case: Case, mode: str) -> bool:
        """is_train for a forward in ``mode``: batch statistics need training mode."""
        return mode != "eval" or not case.layer.track_running_stats

    def nd(self, a: np.ndarray, dtype: str):
        """numpy -> NDArray of ``dtype`` on the CPU (a copy)."""
        return self.mx.nd.array(np.ascontiguousarray(a), dtype=dtype, ctx=self.mx.cpu())

    @staticmethod
    def numpy(a) -> np.ndarray:
        return a.asnumpy().copy()

    def shape_scope(self, shape):
        """NumPy shape semantics for zero-size inputs (MXNet 1.x legacy shapes read 0 as unknown)."""
        import contextlib

        if 0 in tuple(shape):
            return self.mx.util.np_shape(True)
        return contextlib.nullcontext()


class NDArrayBatchNorm(MXNetAdapter):
    """``mx.nd.BatchNorm`` called imperatively under ``mx.autograd`` (oneDNN path)."""

    name = "mx.nd.BatchNorm[onednn]"
    #: Keep the operator's DEFAULT fix_gamma=True even for a learnable gamma (see the subclass).
    default_fix_gamma = False

    def run(self, case, arrays):
        mx, L = self.mx, case.layer
        autograd, pdt, C = mx.autograd, arrays.param_dtype, L.num_features
        rm = self.nd(arrays.init["running_mean"], pdt)
        rv = self.nd(arrays.init["running_var"], pdt)
        if L.affine:
            gamma, beta = self.nd(arrays.init["weight"], pdt), self.nd(arrays.init["bias"], pdt)
        else:
            gamma, beta = self.nd(np.ones(C), pdt), self.nd(np.zeros(C), pdt)
        params = {"weight": gamma, "bias": beta} if L.affine else {}
        trainable = {n: p for n, p in params.items() if n not in L.frozen}
        for p in trainable.values():
            p.attach_grad()  # grad_req='write': every backward overwrites
        optimizer = updater = None
        obs, x, y, train = {}, None, None, False
        for i, step in enumerate(case.steps):
            if isinstance(step, Forward):
                train = self.training(case, step.mode)
                with self.shape_scope(case.input.shape):
                    x = self.nd(arrays.batches[step.batch], case.input.dtype)
                    x.attach_grad()
                    with autograd.record(train_mode=train):
                        y = mx.nd.BatchNorm(x, gamma, beta, rm, rv, eps=L.eps, momentum=self.momentum(case),
                                            fix_gamma=self.default_fix_gamma or not L.affine,
                                            use_global_stats=step.mode == "train_global_stats",
                                            axis=case.input.axis)
                    obs[(i, "output")] = self.numpy(y)
            elif isinstance(step, Backward):
                y.backward(self.nd(arrays.grad_outputs[i], case.input.dtype),
                           retain_graph=case.backward_follows(i), train_mode=train)
                obs[(i, "grad_input")] = self.numpy(x.grad)
                for name, p in trainable.items():
                    obs[(i, f"grad_{name}")] = self.numpy(p.grad)
            elif isinstance(step, SgdStep) and trainable:
                if optimizer is None:
                    optimizer = mx.optimizer.SGD(learning_rate=step.lr, momentum=0.0, wd=0.0, rescale_grad=1.0)
                    updater = mx.optimizer.get_updater(optimizer)
                optimizer.set_learning_rate(step.lr)
                for index, name in enumerate(("weight", "bias")):
                    if name in trainable:
                        updater(index, trainable[name].grad, trainable[name])
            if L.track_running_stats:
                obs[(i, "running_mean")] = self.numpy(rm)
                obs[(i, "running_var")] = self.numpy(rv)
            for name, p in params.items():
                obs[(i, name)] = self.numpy(p)
        return obs


class SymbolBatchNorm(MXNetAdapter):
    """``mx.sym.BatchNorm`` bound to an executor (``Symbol.bind``):
    ``forward(is_train=...)`` / ``backward(out_grads, is_train=...)``, the
    Module-API era idiom. ``use_global_stats`` is a symbol attribute, so each
    value gets its own executor over the SAME argument, gradient and auxiliary
    arrays. oneDNN path."""

    name = "mx.sym.BatchNorm[onednn]"

    def run(self, case, arrays):
        mx, L = self.mx, case.layer
        pdt, C, dt = arrays.param_dtype, L.num_features, case.input.dtype
        shape = tuple(case.input.shape)
        with self.shape_scope(shape):
            args = {"data": mx.nd.zeros(shape, dtype=dt)}
            if L.affine:
                args["gamma"], args["beta"] = self.nd(arrays.init["weight"], pdt), self.nd(arrays.init["bias"], pdt)
            else:
                args["gamma"], args["beta"] = self.nd(np.ones(C), pdt), self.nd(np.zeros(C), pdt)
            aux = {"moving_mean": self.nd(arrays.init["running_mean"], pdt),
                   "moving_var": self.nd(arrays.init["running_var"], pdt)}
            params = ("weight", "bias") if L.affine else ()
            arg_of = {"weight": "gamma", "bias": "beta"}
            trainable = [n for n in params if n not in L.frozen]
            grad_req = {"data": "write", "gamma": "null", "beta": "null"}
            grads = {"data": mx.nd.zeros(shape, dtype=dt)}
            for n in trainable:
                grad_req[arg_of[n]] = "write"
                grads[arg_of[n]] = mx.nd.zeros((C,), dtype=pdt)
            executors = {}

            def executor(global_stats: bool):
                if global_stats not in executors:
                    sym = mx.sym.BatchNorm(
                        data=mx.sym.var("data"), gamma=mx.sym.var("gamma"), beta=mx.sym.var("beta"),
                        moving_mean=mx.sym.var("moving_mean"), moving_var=mx.sym.var("moving_var"),
                        eps=L.eps, momentum=self.momentum(case), fix_gamma=not L.affine,
                        use_global_stats=global_stats, axis=case.input.axis, name="bn")
                    executors[global_stats] = sym.bind(mx.cpu(), args=args, args_grad=grads, grad_req=grad_req,
                                                       aux_states=aux)
                return executors[global_stats]

            optimizer = updater = None
            obs, exe, train = {}, None, False
            for i, step in enumerate(case.steps):
                if isinstance(step, Forward):
                    train = self.training(case, step.mode)
                    exe = executor(step.mode == "train_global_stats")
                    args["data"][:] = self.nd(arrays.batches[step.batch], dt)
                    obs[(i, "output")] = self.numpy(exe.forward(is_train=train)[0])
                elif isinstance(step, Backward):
                    exe.backward(out_grads=[self.nd(arrays.grad_outputs[i], dt)], is_train=train)
                    obs[(i, "grad_input")] = self.numpy(grads["data"])
                    for n in trainable:
                        obs[(i, f"grad_{n}")] = self.numpy(grads[arg_of[n]])
                elif isinstance(step, SgdStep) and trainable:
                    if optimizer is None:
                        optimizer = mx.optimizer.SGD(learning_rate=step.lr, momentum=0.0, wd=0.0, rescale_grad=1.0)
                        updater = mx.optimizer.get_updater(optimizer)
                    optimizer.set_learning_rate(step.lr)
                    for index, n in enumerate(params):
                        if n in trainable:
                            updater(index, grads[arg_of[n]], args[arg_of[n]])
                if L.track_running_stats:
                    obs[(i, "running_mean")] = self.numpy(aux["moving_mean"])
                    obs[(i, "running_var")] = self.numpy(aux["moving_var"])
                for n in params:
                    obs[(i, n)] = self.numpy(args[arg_of[n]])
        return obs


class NDArrayBatchNormNative(NDArrayBatchNorm):
    """``mx.nd.BatchNorm`` on the native CPU kernel (``MXNET_MKLDNN_ENABLED=0``)."""

    name, path = "mx.nd.BatchNorm[native]", "native"


class SymbolBatchNormNative(SymbolBatchNorm):
    """``mx.sym.BatchNorm`` executor on the native CPU kernel (``MXNET_MKLDNN_ENABLED=0``)."""

    name, path = "mx.sym.BatchNorm[native]", "native"


class NDArrayBatchNormFixGamma(NDArrayBatchNorm):
    """``mx.nd.BatchNorm`` called with its DEFAULTS, i.e. ``fix_gamma=True`` even when the
    model loads or trains a gamma — the trap behind "my pretrained gamma has no effect"."""

    name = "mx.nd.BatchNorm[fix_gamma default, onednn]"
    default_fix_gamma = True
    observables = NDArrayBatchNorm.observables - {"weight"}


class NDArrayBatchNormFixGammaNative(NDArrayBatchNormFixGamma):
    """The default-``fix_gamma`` row on the native CPU kernel (``MXNET_MKLDNN_ENABLED=0``)."""

    name, path = "mx.nd.BatchNorm[fix_gamma default, native]", "native"
