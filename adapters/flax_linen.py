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

import numpy as np

from bnconform.adapter import Adapter
from bnconform.catalogue import OBSERVABLES, Backward, Case, Forward, SgdStep

_PARAM = {"weight": "scale", "bias": "bias"}

class FlaxBatchNormAdapter(Adapter):
    """What the Flax BatchNorm APIs (linen and NNX) share: no ``num_batches_tracked``,
    a fixed decay instead of a cumulative average, bfloat16 read back as float32."""

    framework = "flax"
    observables = frozenset(OBSERVABLES) - {"num_batches_tracked"}
    use_fast_variance = True

    def capabilities(self, case: Case) -> str | None:
        if case.uses_cumulative_average:
            api = self.name.split("[")[0]
            return f"{api} takes a fixed float momentum (decay): no cumulative average (momentum=None)"
        return None

    @staticmethod
    def numpy(a) -> np.ndarray:
        a = np.asarray(a)
        if a.dtype.name == "bfloat16":
            a = a.astype(np.float32)
        return a.copy()


class FlaxLinenBatchNorm(FlaxBatchNormAdapter):
    name = "flax.linen.BatchNorm"

    def module(self, case: Case, arrays):
        import jax.numpy as jnp
        import flax.linen as nn

        L = case.layer
        half = case.input.dtype in ("float16", "bfloat16")
        return nn.BatchNorm(
            axis=case.input.axis, momentum=1.0 - (L.momentum if L.momentum is not None else 0.1),
            epsilon=L.eps, use_scale=L.affine, use_bias=L.affine, use_fast_variance=self.use_fast_variance,
            dtype=getattr(jnp, case.input.dtype) if half else None, param_dtype=getattr(jnp, arrays.param_dtype))

    def run(self, case, arrays):
        import jax

        jax.config.update("jax_enable_x64", True)
        import jax.numpy as jnp
        import optax

        L, dt, pdt = case.layer, case.input.dtype, arrays.param_dtype
        bn = self.module(case, arrays)
        params = {_PARAM[n]: jnp.asarray(arrays.init[n], dtype=pdt) for n in ("weight", "bias")} if L.affine else {}
        stats = {"mean": jnp.asarray(arrays.init["running_mean"], dtype=pdt),
                 "var": jnp.asarray(arrays.init["running_var"], dtype=pdt)}
        labels = {_PARAM[n]: ("frozen" if self.frozen(case, n) else "train") for n in ("weight", "bias")} \
            if L.affine else {}
        obs, vjp_fn, grads = {}, None, None
        for i, step in enumerate(case.steps):
            if isinstance(step, Forward):
                use_ra = step.mode != "train" and L.track_running_stats

                def f(p, x, stats=stats, use_ra=use_ra):
                    y, upd = bn.apply({"params": p, "batch_stats": stats}, x,
                                      use_running_average=use_ra, mutable=["batch_stats"])
                    return y, upd["batch_stats"]

                x = jnp.asarray(arrays.batches[step.batch], dtype=dt)
                y, vjp_fn, new_stats = jax.vjp(f, params, x, has_aux=True)
                if step.mode == "train" and L.track_running_stats:
                    stats = new_stats
                obs[(i, "output")] = self.numpy(y)
            elif isinstance(step, Backward):
                g = jnp.asarray(arrays.grad_outputs[i], dtype=dt)
                grads, gx = vjp_fn(g)
                obs[(i, "grad_input")] = self.numpy(gx)
                for n in ("weight", "bias"):
                    if L.affine and not self.frozen(case, n):
                        obs[(i, f"grad_{n}")] = self.numpy(grads[_PARAM[n]])
            elif isinstance(step, SgdStep) and L.affine:
                tx = optax.multi_transform({"train": optax.sgd(step.lr), "frozen": optax.set_to_zero()}, labels)
                updates, _ = tx.update(grads, tx.init(params), params)
                params = optax.apply_updates(params, updates)
            if L.track_running_stats:
                obs[(i, "running_mean")] = self.numpy(stats["mean"])
                obs[(i, "running_var")] = self.numpy(stats["var"])
            if L.affine:
                obs[(i, "weight")] = self.numpy(params["scale"])
                obs[(i, "bias")] = self.numpy(params["bias"])
        return obs


class FlaxLinenBatchNormStableVariance(FlaxLinenBatchNorm):
    """``use_fast_variance=False``: the two-pass ``E[(x - E[x])^2]`` variance."""

    name = "flax.linen.BatchNorm[use_fast_variance=False]"
    use_fast_variance = False
