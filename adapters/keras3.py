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

from bnconform.catalogue import OBSERVABLES, Case

from ._keras import KerasLayer
from ._tf import TFTape

#: Logical CPU devices of TensorFlow in the keras-tf env: the replicas of the MirroredStrategy row
#: (adapters/keras_mirrored.py). The other rows keep running on /CPU:0.
LOGICAL_CPUS = 4


def logical_cpus(n: int) -> int:
    """Split TensorFlow's one physical CPU into ``n`` logical devices
    (``tf.config.set_logical_device_configuration``, which must run before the
    runtime initialises: the first process-wide call wins). Returns the number
    of logical CPU devices the process has."""
    import tensorflow as tf

    cpus = tf.config.list_physical_devices("CPU")
    try:
        if len(tf.config.get_logical_device_configuration(cpus[0]) or []) < n:
            tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * n)
    except RuntimeError:  # already initialised: keep what it has
        pass
    return len(tf.config.list_logical_devices("CPU"))


_POLICY = {"float64": "float64", "float32": "float32", "float16": "mixed_float16", "bfloat16": "mixed_bfloat16"}


class _Keras3(KerasLayer):
    """``keras.layers.BatchNormalization`` on ``backend`` (a Keras backend name)."""

    framework = "keras"
    backend = ""
    policy = _POLICY
    observables = frozenset(OBSERVABLES) - {"num_batches_tracked"}

    # ------------------------------------------------------------ environment
    def framework_version(self) -> str:
        if "keras" not in sys.modules:
            os.environ.setdefault("KERAS_BACKEND", self.backend)
            if os.environ["KERAS_BACKEND"] == "tensorflow":
                logical_cpus(LOGICAL_CPUS)  # before keras (or any row) initialises TensorFlow
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

class BatchNormalizationTF(_Keras3, TFTape):
    """Keras 3 on TensorFlow: gradients with ``tf.GradientTape`` (persistent,
    so that two backwards of one forward each get fresh gradients)."""

    name, backend = "keras.layers.BatchNormalization[tensorflow]", "tensorflow"

    def to_backend(self, a, dtype):
        return self.constant(a, dtype)

    def layer_call(self, cell, x, training):
        """The layer call (hook for compiled execution paths)."""
        return cell.layer(x, training=training)

    def call(self, cell, x, training):
        return self.record(cell, lambda x: self.layer_call(cell, x, training), x), None

    def differentiate(self, cell, ctx, g, retain):
        dx, *dparams = cell.tape.gradient(cell.y, [cell.x] + [p.value for p in cell.learn], output_gradients=g)
        return dx, dparams


class BatchNormalizationJAX(_Keras3):
    """Keras 3 on JAX: the forward is ``layer.stateless_call`` differentiated
    with ``jax.vjp`` (the Keras-on-JAX custom-training idiom); the returned
    non-trainable state (moving statistics) is written back to the layer."""

    name, backend = "keras.layers.BatchNormalization[jax]", "jax"

    def scope(self, case):
        import jax

        # JAX computes in 32 bits unless x64 is enabled (the documented switch,
        # here scoped to the case): float64 layers need it. Version dependence (issue 17's sweep), the
        # only one of this row: top-level jax.enable_x64 exists from jax 0.8.0 (read in the released
        # jax/__init__.py of 0.4.26 ... 0.9.2); older jax has the same scoped switch as
        # jax.experimental.enable_x64(new_val=True) (AttributeError on jax.enable_x64 in 0.4.23).
        if case.input.dtype != "float64":
            return super().scope(case)
        if hasattr(jax, "enable_x64"):
            return jax.enable_x64(True)
        from jax.experimental import enable_x64

        return enable_x64(True)

    def to_backend(self, a, dtype):
        import jax.numpy as jnp

        return jnp.asarray(np.ascontiguousarray(a), dtype=getattr(jnp, dtype))

    def call(self, cell, x, training):
        import jax

        layer = cell.layer
        tvars, ntvars = layer.trainable_variables, layer.non_trainable_variables

        def fn(x, tv, ntv):
            y, new_ntv = layer.stateless_call(tv, ntv, x, training=training)
            return y, new_ntv

        tv, ntv = [v.value for v in tvars], [v.value for v in ntvars]
        y, vjp, new_ntv = jax.vjp(fn, x, tv, ntv, has_aux=True)
        for var, value in zip(ntvars, new_ntv):
            var.assign(value)
        return y, (vjp, tvars, ntvars)

    def differentiate(self, cell, ctx, g, retain):
        vjp, tvars, ntvars = ctx
        dx, dtv, dntv = vjp(g)
        by_id = {id(v): d for v, d in zip(list(tvars) + list(ntvars), list(dtv) + list(dntv))}
        return dx, [by_id[id(p)] for p in cell.learn]


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
            return t.numpy()
        return super().to_numpy(t)

    def call(self, cell, x, training):
        if cell.needs_grad:
            x.requires_grad_(True)
        y = cell.layer(x, training=training)
        return y, (x, y)

    def differentiate(self, cell, ctx, g, retain):
        import torch

        x, y = ctx
        dx, *dparams = torch.autograd.grad(y, [x] + [p.value for p in cell.learn], g, retain_graph=retain)
        return dx, dparams
