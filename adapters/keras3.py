"""Adapters for Keras 3 ``keras.layers.BatchNormalization`` on the TensorFlow,
JAX and PyTorch backends (``keras/src/layers/normalization/batch_normalization.py``).

Keras reads its backend ONCE, at import (``KERAS_BACKEND``), so each backend is
its own adapter class and its own env (tox ``keras-tf``, ``keras-jax``,
``keras-torch``). :meth:`_Keras3.framework_version` sets ``KERAS_BACKEND`` to
the class's backend when nothing has imported keras yet and it is unset; a row
whose backend is not the one keras was imported with reports itself
unavailable (skipped), never runs on the wrong backend.

Semantics relied on (keras 3.15.1, read in the installed source):

* ``BatchNormalization.call``: batch statistics only ``if training and
  self.trainable``; otherwise the moving statistics. So ``layer.trainable =
  False`` + ``training=True`` normalises with the moving statistics (the
  inference mode, Keras' fine-tuning idiom since TF 2.0) — our
  ``train_global_stats``; gradients still flow through the call.
* Moving update ``moving = moving * momentum + batch * (1 - momentum)`` with
  ``(mean, variance) = ops.moments(...)``: the BIASED batch variance
  (Keras issue #19649); ``momentum`` is the decay, i.e. ``1 - m`` of the
  catalogue's new-batch weight ``m``. No counter, no cumulative average.
* Inputs are computed in ``result_type(input, float32)`` and the output cast to
  the layer's compute dtype: half-precision cases use the ``mixed_float16`` /
  ``mixed_bfloat16`` dtype policies (float32 variables, half compute), float64
  cases ``dtype="float64"``.
* ``ops.moments``: TF backend ``tf.nn.moments`` (two-pass), JAX ``jnp.var``,
  torch backend ``E[x^2] - E[x]^2`` (``keras/src/backend/torch/nn.py``).

Idioms translated: ``eval`` -> ``layer(x, training=False)``; ``frozen`` ->
``variable.trainable = False`` and left out of the gradient list and of the
optimizer; ``backward`` -> the backend's own autodiff (TF ``GradientTape``,
JAX ``layer.stateless_call`` under ``jax.vjp`` — the Keras-on-JAX training
idiom —, torch autograd on the variables' ``torch.nn.Parameter``);
``sgd_step`` -> ``keras.optimizers.SGD(learning_rate).apply(grads, variables)``.
"""

from __future__ import annotations

import importlib
import os
import sys

import numpy as np

from bnconform.adapter import Adapter
from bnconform.catalogue import OBSERVABLES, Backward, Case, Forward, SgdStep

_POLICY = {"float64": "float64", "float32": "float32", "float16": "mixed_float16", "bfloat16": "mixed_bfloat16"}


def _steps_with(case: Case, kind) -> bool:
    return any(isinstance(s, kind) for s in case.steps)


class _Keras3(Adapter):
    """``keras.layers.BatchNormalization`` on ``backend`` (a Keras backend name)."""

    framework = "keras"
    backend = ""
    observables = frozenset(OBSERVABLES) - {"num_batches_tracked"}

    # ------------------------------------------------------------ environment
    def framework_version(self) -> str:
        if "keras" not in sys.modules:
            os.environ.setdefault("KERAS_BACKEND", self.backend)
        keras = importlib.import_module("keras")
        active = keras.backend.backend()
        backend_module = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}.get(active, active)
        bver = str(getattr(importlib.import_module(backend_module), "__version__", "unknown"))
        # PEP 440 local label: divergence specifiers compare the Keras version only.
        return f"{keras.__version__}+{active}.{bver.split('+')[0]}"

    def available(self) -> str | None:
        import keras

        active = keras.backend.backend()
        if active != self.backend:
            return (f"keras was imported with the {active!r} backend in this process; this row needs "
                    f"KERAS_BACKEND={self.backend} (its own env)")
        return None

    def capabilities(self, case: Case) -> str | None:
        L = case.layer
        if case.uses_cumulative_average:
            return ("keras BatchNormalization takes a float momentum (decay); it has no cumulative average "
                    "(PyTorch's momentum=None) and no batch counter")
        if not L.track_running_stats:
            return ("keras BatchNormalization always keeps moving_mean/moving_variance and training=False always "
                    "normalises with them; there is no track_running_stats=False (batch statistics at inference)")
        return None

    # ------------------------------------------------------------ backend hooks
    def to_backend(self, a: np.ndarray, dtype: str):
        raise NotImplementedError

    def to_numpy(self, t) -> np.ndarray:
        import keras

        a = keras.ops.convert_to_numpy(t)
        if str(a.dtype) == "bfloat16":
            a = a.astype(np.float32)
        return np.array(a, copy=True)

    def forward(self, layer, x, training: bool, need_grad: bool, params: list):
        """Run the layer; return ``(y, ctx)`` where ``ctx`` lets :meth:`backward` differentiate."""
        raise NotImplementedError

    def backward(self, ctx, g, params: list, retain: bool):
        """Return ``(dx, [d param for params])``."""
        raise NotImplementedError

    # ------------------------------------------------------------ program
    @staticmethod
    def _flags(named: dict, frozen) -> None:
        """``variable.trainable``: False for the case's frozen parameters, True otherwise."""
        for name, var in named.items():
            var.trainable = name not in frozen

    def run(self, case, arrays):
        import keras

        L, dt = case.layer, case.input.dtype
        layer = keras.layers.BatchNormalization(
            axis=case.input.axis, momentum=1.0 - L.momentum, epsilon=L.eps, center=L.affine, scale=L.affine,
            dtype=_POLICY[dt])
        layer.build(tuple(case.input.shape))
        pdt = arrays.param_dtype
        layer.moving_mean.assign(np.asarray(arrays.init["running_mean"], dtype=pdt))
        layer.moving_variance.assign(np.asarray(arrays.init["running_var"], dtype=pdt))
        named = {}
        if L.affine:
            named = {"weight": layer.gamma, "bias": layer.beta}
            for name, var in named.items():
                var.assign(np.asarray(arrays.init[name], dtype=pdt))
        learn = [(n, v) for n, v in named.items() if n not in L.frozen]
        need_grad = _steps_with(case, Backward)
        obs, ctx, grads = {}, None, []
        for i, step in enumerate(case.steps):
            if isinstance(step, Forward):
                # Layer.trainable's setter also rewrites every weight's
                # trainable flag (and, on torch, requires_grad): set the
                # per-variable flags after it, as the case wants them.
                layer.trainable = step.mode != "train_global_stats"
                self._flags(named, L.frozen)
                x = self.to_backend(arrays.batches[step.batch], dt)
                y, ctx = self.forward(layer, x, step.mode != "eval", need_grad, [v for _, v in learn])
                layer.trainable = True
                self._flags(named, L.frozen)
                obs[(i, "output")] = self.to_numpy(y)
            elif isinstance(step, Backward):
                dx, grads = self.backward(ctx, self.to_backend(arrays.grad_outputs[i], dt),
                                          [v for _, v in learn], case.backward_follows(i))
                obs[(i, "grad_input")] = self.to_numpy(dx)
                for (name, _), grad in zip(learn, grads):
                    obs[(i, f"grad_{name}")] = self.to_numpy(grad)
            elif isinstance(step, SgdStep) and learn:
                keras.optimizers.SGD(learning_rate=step.lr).apply(list(grads), [v for _, v in learn])
            obs[(i, "running_mean")] = self.to_numpy(layer.moving_mean.value)
            obs[(i, "running_var")] = self.to_numpy(layer.moving_variance.value)
            for name, var in named.items():
                obs[(i, name)] = self.to_numpy(var.value)
        return obs


class BatchNormalizationTF(_Keras3):
    """Keras 3 on TensorFlow: gradients with ``tf.GradientTape`` (persistent,
    so that two backwards of one forward each get fresh gradients)."""

    name, backend = "keras.layers.BatchNormalization[tensorflow]", "tensorflow"

    def to_backend(self, a, dtype):
        import tensorflow as tf

        return tf.cast(tf.constant(np.ascontiguousarray(a)), getattr(tf, dtype))

    def forward(self, layer, x, training, need_grad, params):
        import tensorflow as tf

        if not need_grad:
            return layer(x, training=training), None
        tape = tf.GradientTape(persistent=True)
        with tape:
            tape.watch(x)
            y = layer(x, training=training)
        return y, (tape, x, y)

    def backward(self, ctx, g, params, retain):
        tape, x, y = ctx
        dx, *dparams = tape.gradient(y, [x] + [p.value for p in params], output_gradients=g)
        return dx, dparams


class BatchNormalizationJAX(_Keras3):
    """Keras 3 on JAX: the forward is ``layer.stateless_call`` differentiated
    with ``jax.vjp`` (the Keras-on-JAX custom-training idiom); the returned
    non-trainable state (moving statistics) is written back to the layer."""

    name, backend = "keras.layers.BatchNormalization[jax]", "jax"

    def run(self, case, arrays):
        import jax

        if case.input.dtype != "float64":
            return super().run(case, arrays)
        # JAX computes in 32 bits unless x64 is enabled (the documented switch,
        # here scoped to the case): float64 layers need it.
        with jax.enable_x64(True):
            return super().run(case, arrays)

    def to_backend(self, a, dtype):
        import jax.numpy as jnp

        return jnp.asarray(np.ascontiguousarray(a), dtype=getattr(jnp, dtype))

    def forward(self, layer, x, training, need_grad, params):
        import jax

        tvars, ntvars = layer.trainable_variables, layer.non_trainable_variables

        def fn(x, tv, ntv):
            y, new_ntv = layer.stateless_call(tv, ntv, x, training=training)
            return y, new_ntv

        tv, ntv = [v.value for v in tvars], [v.value for v in ntvars]
        y, vjp, new_ntv = jax.vjp(fn, x, tv, ntv, has_aux=True)
        for var, value in zip(ntvars, new_ntv):
            var.assign(value)
        return y, (vjp, tvars, ntvars)

    def backward(self, ctx, g, params, retain):
        vjp, tvars, ntvars = ctx
        dx, dtv, dntv = vjp(g)
        by_id = {id(v): d for v, d in zip(list(tvars) + list(ntvars), list(dtv) + list(dntv))}
        return dx, [by_id[id(p)] for p in params]


class BatchNormalizationTorch(_Keras3):
    """Keras 3 on PyTorch: autograd through the variables' ``torch.nn.Parameter``
    (``variable.value``), as in Keras' PyTorch custom-training guide."""

    name, backend = "keras.layers.BatchNormalization[torch]", "torch"

    def to_backend(self, a, dtype):
        import torch
        from keras.src.backend.torch.core import get_device

        return torch.tensor(np.ascontiguousarray(a)).to(device=get_device(), dtype=getattr(torch, dtype))

    def to_numpy(self, t):
        import torch

        if isinstance(t, torch.Tensor):
            t = t.detach().cpu()
            if t.dtype == torch.bfloat16:
                t = t.float()
            return t.numpy().copy()
        return super().to_numpy(t)

    def forward(self, layer, x, training, need_grad, params):
        if need_grad:
            x.requires_grad_(True)
        y = layer(x, training=training)
        return y, (x, y)

    def backward(self, ctx, g, params, retain):
        import torch

        x, y = ctx
        dx, *dparams = torch.autograd.grad(y, [x] + [p.value for p in params], g, retain_graph=retain)
        return dx, dparams
