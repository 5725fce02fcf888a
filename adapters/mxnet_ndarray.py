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

from bnconform.catalogue import OBSERVABLES

from ._mxnet import MXNetBase, NDArrayHooks, SymbolHooks


def mkldnn_enabled() -> bool:
    """Whether MXNet takes its oneDNN (MKLDNN) path in this process:
    ``MXNET_MKLDNN_ENABLED`` unset or true (dmlc::GetEnv, read once by MXNet)."""
    return os.environ.get("MXNET_MKLDNN_ENABLED", "1").strip().lower() not in ("0", "false")


def path_tag() -> str:
    return "onednn" if mkldnn_enabled() else "native"


class MXNetAdapter(MXNetBase):
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


class NDArrayBatchNorm(NDArrayHooks, MXNetAdapter):
    """``mx.nd.BatchNorm`` called imperatively under ``mx.autograd`` (oneDNN path)."""

    name = "mx.nd.BatchNorm[onednn]"
    #: Keep the operator's DEFAULT fix_gamma=True even for a learnable gamma (see the subclass).
    default_fix_gamma = False


class SymbolBatchNorm(SymbolHooks, MXNetAdapter):
    """``mx.sym.BatchNorm`` bound to an executor (``Symbol.bind``):
    ``forward(is_train=...)`` / ``backward(out_grads, is_train=...)``, the
    Module-API era idiom. ``use_global_stats`` is a symbol attribute, so each
    value gets its own executor over the SAME argument, gradient and auxiliary
    arrays. oneDNN path."""

    name = "mx.sym.BatchNorm[onednn]"


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
