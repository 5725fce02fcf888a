"""Adapters for ``flax.linen.BatchNorm`` (``flax/linen/normalization.py``) on JAX (CPU).

Semantics relied on (flax 0.12.8, jax 0.10.2), read in ``flax/linen/normalization.py``:

* ``momentum`` is the DECAY: ``ra = momentum * ra + (1 - momentum) * batch``
  (``BatchNorm.__call__``), so the catalogue's new-batch weight ``m`` becomes
  ``momentum = 1 - m``; there is no cumulative average.
* The running variance is updated with the batch variance used for
  normalisation, the BIASED one (``_compute_stats``: ``E[x^2] - E[x]^2``
  clamped at 0 when ``use_fast_variance=True`` — the default — else
  ``E[(x - E[x])^2]``); statistics are computed in at least float32
  (``force_float32_reductions=True``).
* Running statistics live in the ``batch_stats`` collection and change only
  when it is ``mutable`` and ``use_running_average=False``; ``axis`` names the
  feature (channel) axis; ``use_scale``/``use_bias`` switch gamma/beta off.
* ``_normalize``: ``y = (x - mean) * (rsqrt(var + eps) * scale) + bias``,
  returned in ``dtype`` (the computation dtype; the input dtype is passed for
  float16/bfloat16 inputs, float32 parameters: Flax's mixed-precision idiom).

Idioms translated: ``train`` -> ``apply(..., use_running_average=False,
mutable=["batch_stats"])`` and the returned ``batch_stats`` kept; ``eval`` and
``train_global_stats`` -> ``use_running_average=True`` (Flax has no separate
"global stats in training" switch: gradients flow through the same call);
``track_running_stats: false`` -> ``use_running_average=False`` in every mode
with the ``batch_stats`` update discarded. Gradients: ``jax.vjp`` of the
apply function w.r.t. ``params`` (``scale`` = gamma, ``bias`` = beta) and the
input. ``sgd_step`` -> ``optax.sgd(lr)``; ``layer.frozen`` ->
``optax.multi_transform`` with ``optax.set_to_zero()`` for the frozen leaves
(the optax idiom for freezing parameters).

float64 cases need JAX's x64 mode: the adapter enables
``jax_enable_x64`` before any array is built (for every case, so results do
not depend on the order cases run in; float32 arrays stay float32).
"""

from __future__ import annotations

import os
import sys
from typing import ClassVar

#: JAX host (CPU) devices the synchronized rows (adapters/flax_sync.py) map replicas on. XLA reads
#: ``--xla_force_host_platform_device_count`` when jax initialises its CPU backend, so it is set
#: here, before any flax row imports jax (the tox ``flax`` env sets it too). Computations of the
#: other rows stay on the first device (``jax.devices()[0]``).
HOST_DEVICES = 4
if "jax" not in sys.modules and "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + f" --xla_force_host_platform_device_count={HOST_DEVICES}").strip()

from bnconform.adapter import Adapter
from bnconform.catalogue import OBSERVABLES, Case
from bnconform.drive import updates_running_stats, uses_batch_stats

_PARAM = {"weight": "scale", "bias": "bias"}

class FlaxBatchNormAdapter(Adapter):
    """What the Flax BatchNorm APIs (linen and NNX) share: no ``num_batches_tracked``,
    a fixed decay instead of a cumulative average, bfloat16 read back as float32."""

    framework = "flax"
    observables = frozenset(OBSERVABLES) - {"num_batches_tracked"}
    use_fast_variance = True
    #: Version dependence (issue 17's release sweep), all of it here: the oldest flax release this
    #: row's translation runs on and why (older: every case ``unsupported`` with the reason), read in
    #: the released sources of flax 0.6.11 ... 0.12.8.
    since: ClassVar[tuple[str, str] | None] = None
    #: ``nn.BatchNorm(use_fast_variance=...)`` first exists in flax 0.7.5 (not in 0.6.11); before it
    #: ``_compute_stats`` always computes the one-pass ``E[x^2] - E[x]^2`` (the default row's algorithm),
    #: so the default rows omit the argument there.
    FAST_VARIANCE_ARG = "0.7.5"

    @staticmethod
    def flax_version():
        import flax
        from packaging.version import Version

        return Version(flax.__version__)

    def capabilities(self, case: Case) -> str | None:
        from packaging.version import Version

        if self.since and self.flax_version() < Version(self.since[0]):
            return f"{self.name} needs flax >= {self.since[0]} (this env: {self.flax_version()}): {self.since[1]}"
        if case.uses_cumulative_average:
            api = self.name.split("[")[0]
            return f"{api} takes a fixed float momentum (decay): no cumulative average (momentum=None)"
        return None

    def scope(self, case):
        import jax

        # float64 cases need x64; enabled for every case so that results do not
        # depend on the order cases run in (float32 arrays stay float32).
        jax.config.update("jax_enable_x64", True)
        return super().scope(case)


class FlaxLinenBatchNorm(FlaxBatchNormAdapter):
    name = "flax.linen.BatchNorm"

    def module(self, case: Case, arrays):
        import jax.numpy as jnp
        import flax.linen as nn

        from packaging.version import Version

        L = case.layer
        half = case.input.dtype in ("float16", "bfloat16")
        variance = ({"use_fast_variance": self.use_fast_variance}
                    if self.flax_version() >= Version(self.FAST_VARIANCE_ARG) else {})  # see FAST_VARIANCE_ARG
        return nn.BatchNorm(
            axis=case.input.axis, momentum=L.decay,
            epsilon=L.eps, use_scale=L.affine, use_bias=L.affine, **variance,
            dtype=getattr(jnp, case.input.dtype) if half else None, param_dtype=getattr(jnp, arrays.param_dtype))

    def build(self, cell):
        import jax.numpy as jnp

        L, pdt, init = cell.case.layer, cell.param_dtype, cell.arrays.init
        cell.bn = self.module(cell.case, cell.arrays)
        cell.params = {_PARAM[n]: jnp.asarray(init[n], dtype=pdt) for n in ("weight", "bias")} if L.affine else {}
        cell.stats = {"mean": jnp.asarray(init["running_mean"], dtype=pdt),
                      "var": jnp.asarray(init["running_var"], dtype=pdt)}
        cell.labels = {_PARAM[n]: ("frozen" if n in cell.frozen else "train") for n in ("weight", "bias")} \
            if L.affine else {}

    def forward(self, cell, x, mode):
        import jax
        import jax.numpy as jnp

        bn, stats, use_ra = cell.bn, cell.stats, not uses_batch_stats(cell.case, mode)

        def f(p, x):
            y, upd = bn.apply({"params": p, "batch_stats": stats}, x, use_running_average=use_ra,
                              mutable=["batch_stats"])
            return y, upd["batch_stats"]

        y, cell.vjp, new_stats = jax.vjp(f, cell.params, jnp.asarray(x, dtype=cell.dtype), has_aux=True)
        if updates_running_stats(cell.case, mode):
            cell.stats = new_stats
        return y

    def backward(self, cell, grad_output, retain):
        import jax.numpy as jnp

        cell.grads, gx = cell.vjp(jnp.asarray(grad_output, dtype=cell.dtype))
        return gx, {n: cell.grads[_PARAM[n]] for n in cell.trainable}

    def sgd_step(self, cell, lr):
        import optax

        tx = optax.multi_transform({"train": optax.sgd(lr), "frozen": optax.set_to_zero()}, cell.labels)
        updates, _ = tx.update(cell.grads, tx.init(cell.params), cell.params)
        cell.params = optax.apply_updates(cell.params, updates)

    def state(self, cell):
        params = {"weight": cell.params["scale"], "bias": cell.params["bias"]} if cell.params else {}
        return {"running_mean": cell.stats["mean"], "running_var": cell.stats["var"], **params}


class FlaxLinenBatchNormStableVariance(FlaxLinenBatchNorm):
    """``use_fast_variance=False``: the two-pass ``E[(x - E[x])^2]`` variance."""

    name = "flax.linen.BatchNorm[use_fast_variance=False]"
    use_fast_variance = False
    since = ("0.7.5", "nn.BatchNorm has no use_fast_variance argument before flax 0.7.5 (flax 0.6.11 "
                      "flax/linen/normalization.py: _compute_stats always computes E[x^2] - E[x]^2)")
