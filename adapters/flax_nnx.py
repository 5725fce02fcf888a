"""Adapter for ``flax.nnx.BatchNorm`` (``flax/nnx/nn/normalization.py``) on JAX (CPU).

Semantics relied on (flax 0.12.8, jax 0.10.2), read in ``flax/nnx/nn/normalization.py``:

* ``momentum`` is the DECAY: ``mean[...] = momentum * mean[...] + (1 - momentum)
  * batch_mean`` (``BatchNorm.__call__``), so the catalogue's new-batch weight
  ``m`` becomes ``momentum = 1 - m``; there is no cumulative average.
* The running variance is updated with the BIASED batch variance that
  normalises (``_compute_stats``, shared in form with linen: ``E[x^2] -
  E[x]^2`` clamped at 0 with the default ``use_fast_variance=True``, else
  ``E[(x - E[x])^2]``), computed in at least float32.
* The layer holds ``scale``/``bias`` as ``nnx.Param`` and ``mean``/``var`` as
  ``nnx.BatchStat`` (created float32 whatever ``param_dtype``; the adapter
  assigns the case's initial values in the case's parameter dtype).
  ``axis`` is the feature (channel) axis; ``use_scale``/``use_bias`` switch
  gamma/beta off. ``promote_dtype`` casts input, running stats, scale and bias
  to ``dtype`` (the computation dtype) before normalising; the input dtype is
  passed for float16/bfloat16 inputs (float32 parameters), as in the linen
  adapter. Unlike linen (whose ``_normalize`` keeps scale/bias in
  ``param_dtype``), the float32 scale/bias are therefore cast to the half
  dtype and their gradients come back half-precision
  (``flax-nnx-half-param-grads``, ``findings/flax_nnx_half_param_grads.py``).
* Verified on NNX (not assumed from linen): biased running variance, the
  one-pass variance cancellation of ``use_fast_variance=True`` (same cases,
  same kappa threshold), NaN running statistics after an empty training
  batch, and the bfloat16 ``grad_input`` error of the backward.
* A freshly built ``nnx.BatchNorm`` is in training mode
  (``use_running_average=False``); ``Module.train()`` / ``Module.eval()``
  (``flax/nnx/module.py``) set ``use_running_average`` False / True.

Idioms translated: ``train`` -> ``bn.train()`` then ``bn(x)`` (the running
statistics are updated in place); ``eval`` and ``train_global_stats`` ->
``bn.eval()`` (NNX has no separate "global statistics in training" switch:
gradients flow through the same call); ``track_running_stats: false`` ->
``bn.train()`` in every mode (the statistics it writes are not observed).
Gradients: ``nnx.vjp`` (``flax/nnx/transforms/autodiff.py``, the stateful
``jax.vjp`` that propagates the BatchStat update back into the module) of
``lambda m, x: m(x)``; ``grad_weight``/``grad_bias`` are the module-gradient's
``scale``/``bias``. ``sgd_step`` -> ``nnx.Optimizer(bn, optax.sgd(lr),
wrt=...)`` with ``wrt`` the ``nnx.Param`` filter minus the frozen parameters'
paths (``nnx.All(nnx.Param, nnx.Not(nnx.PathContains(name)))``), the NNX
idiom for training a subset of parameters (``flax/nnx/training/optimizer.py``).

float64 cases need JAX's x64 mode (enabled before any array is built, for
every case, as in the linen adapter).
"""

from __future__ import annotations

from bnconform.catalogue import Case
from bnconform.drive import uses_batch_stats

from .flax_linen import FlaxBatchNormAdapter

_PARAM = {"weight": "scale", "bias": "bias"}


class FlaxNNXBatchNorm(FlaxBatchNormAdapter):
    name = "flax.nnx.BatchNorm"
    #: The translation below is written against the flax.nnx API of flax 0.12 (issue 17's sweep, read
    #: in the released sources): ``nnx.vjp`` and ``Variable.set_value`` are absent from flax 0.11.2 and
    #: older; ``flax.nnx`` itself exists from flax 0.8 (``flax.experimental.nnx`` before).
    since = ("0.12.0", "the adapter translates to the flax.nnx API of flax 0.12 (nnx.vjp, Variable.set_value, "
                       "nnx.Optimizer(wrt=...).update(model, grads)); nnx.vjp and Variable.set_value do not exist "
                       "in flax 0.11.2 and older (flax.nnx itself: flax >= 0.8)")

    def module(self, case: Case, arrays):
        import jax.numpy as jnp
        from flax import nnx

        L = case.layer
        dt, pdt = case.input.dtype, arrays.param_dtype
        half = dt in ("float16", "bfloat16")
        bn = nnx.BatchNorm(
            case.input.shape[case.input.axis], axis=case.input.axis,
            momentum=L.decay, epsilon=L.eps,
            use_scale=L.affine, use_bias=L.affine, use_fast_variance=self.use_fast_variance,
            dtype=getattr(jnp, dt) if half else None, param_dtype=getattr(jnp, pdt), rngs=nnx.Rngs(0))
        bn.mean.set_value(jnp.asarray(arrays.init["running_mean"], dtype=pdt))
        bn.var.set_value(jnp.asarray(arrays.init["running_var"], dtype=pdt))
        if L.affine:
            bn.scale.set_value(jnp.asarray(arrays.init["weight"], dtype=pdt))
            bn.bias.set_value(jnp.asarray(arrays.init["bias"], dtype=pdt))
        return bn

    def call(self, bn, x):
        """``(y, vjp_fn)``: the layer call under ``nnx.vjp`` (updates ``bn``'s BatchStats)."""
        from flax import nnx

        return nnx.vjp(lambda m, x: m(x), bn, x, graph=False)

    def build(self, cell):
        from flax import nnx

        cell.bn = self.module(cell.case, cell.arrays)
        cell.wrt = nnx.All(nnx.Param, *(nnx.Not(nnx.PathContains(_PARAM[n])) for n in cell.frozen))

    def forward(self, cell, x, mode):
        import jax.numpy as jnp

        cell.bn.train() if uses_batch_stats(cell.case, mode) else cell.bn.eval()
        y, cell.vjp = self.call(cell.bn, jnp.asarray(x, dtype=cell.dtype))
        return y

    def backward(self, cell, grad_output, retain):
        import jax.numpy as jnp

        cell.grads, gx = cell.vjp(jnp.asarray(grad_output, dtype=cell.dtype))
        return gx, {n: getattr(cell.grads, _PARAM[n])[...] for n in cell.trainable}

    def sgd_step(self, cell, lr):
        import optax
        from flax import nnx

        nnx.Optimizer(cell.bn, optax.sgd(lr), wrt=cell.wrt).update(cell.bn, cell.grads)

    def state(self, cell):
        bn = cell.bn
        params = {"weight": bn.scale[...], "bias": bn.bias[...]} if cell.case.layer.affine else {}
        return {"running_mean": bn.mean[...], "running_var": bn.var[...], **params}


class FlaxNNXBatchNormStableVariance(FlaxNNXBatchNorm):
    """``use_fast_variance=False``: the two-pass ``E[(x - E[x])^2]`` variance."""

    name = "flax.nnx.BatchNorm[use_fast_variance=False]"
    use_fast_variance = False
