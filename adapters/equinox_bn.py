"""Adapter for ``equinox.nn.BatchNorm(mode="batch")`` on JAX (CPU), equinox 0.13.8 / jax 0.10.2:
a second JAX BatchNorm whose state semantics differ from Flax's.

Semantics relied on, read in ``equinox/nn/_batch_norm.py`` (``BatchNorm.__call__``):

* The layer sees ONE example ``(C, *spatial)`` and must run under ``jax.vmap``
  with a matching ``axis_name``; statistics are ``lax.pmean`` over that axis
  of per-example means: the batch mean and the BIASED batch variance
  ``mean((y - mean)^2)`` (clamped at 0), computed in the input dtype.
* ``momentum`` is the DECAY (default 0.99): ``hidden = hidden * momentum +
  batch * (1 - momentum)``, so the catalogue's new-batch weight ``m`` becomes
  ``momentum = 1 - m``. ``mode="batch"`` keeps ``hidden`` (initialised to
  mean 0, variance 1) and a counter ``t`` of training calls in an
  ``eqx.nn.State``.
* Inference (``inference=True``) normalises with ``hidden / (1 - momentum^t)``
  ("zero-debias", for ``t > 0``), a correction derived for an average that
  starts at ZERO, applied to a variance that starts at ONE.
* ``mode="ema"`` (the default when ``mode`` is not given, with a warning) is a
  different layer: it normalises TRAINING forwards with the updated running
  statistics; it is not this row.

Idioms translated: initial running statistics -> ``state.set(bn.batch_state_index,
(mean, var))`` (counter 0), gamma/beta -> ``eqx.tree_at``; ``train`` ->
``inference=False`` and the returned state kept; ``eval`` and
``train_global_stats`` -> ``inference=True`` (gradients flow through it);
gradients by ``jax.vjp`` w.r.t. the input, weight and bias; ``sgd_step`` ->
``p - lr * grad`` on the trainable leaves (frozen ones kept). The
``running_mean`` / ``running_var`` observed are the state's ``hidden`` pair.
float64 cases: ``jax_enable_x64`` (as the Flax adapters).
"""

from __future__ import annotations

from bnconform.adapter import Adapter
from bnconform.catalogue import OBSERVABLES, Case
from bnconform.drive import uses_batch_stats


class EquinoxBatchNorm(Adapter):
    name = 'equinox.nn.BatchNorm(mode="batch")'
    framework = "equinox"
    observables = frozenset(OBSERVABLES) - {"num_batches_tracked"}

    def capabilities(self, case: Case) -> str | None:
        if case.input.axis != 1:
            return ("equinox.nn.BatchNorm takes each example as (C, *spatial), channel first; "
                    f"channel_axis={case.input.channel_axis} needs a transpose, a different program")
        if case.uses_cumulative_average:
            return "equinox.nn.BatchNorm takes a fixed float momentum (decay): no cumulative average (momentum=None)"
        if case.input.dtype in ("float16", "bfloat16"):
            return ("equinox.nn.BatchNorm holds weight, bias and statistics in ONE dtype (no mixed precision): with "
                    f"{case.input.dtype} input and the catalogue's float32 parameters the output is promoted to "
                    "float32 (measured), and half parameters would keep the statistics in half")
        if not case.layer.track_running_stats:
            return ("equinox.nn.BatchNorm always keeps running statistics and uses them with inference=True: "
                    "no track_running_stats=False (batch statistics in eval)")
        return None

    def scope(self, case):
        import jax

        jax.config.update("jax_enable_x64", True)
        return super().scope(case)

    def build(self, cell):
        import warnings

        import equinox as eqx
        import jax.numpy as jnp

        L, pdt = cell.case.layer, cell.param_dtype
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            bn, state = eqx.nn.make_with_state(eqx.nn.BatchNorm)(
                input_size=L.num_features, axis_name="batch", eps=L.eps, channelwise_affine=L.affine,
                momentum=L.decay, dtype=getattr(jnp, pdt), mode="batch")
        state = state.set(bn.batch_state_index, (jnp.asarray(cell.init("running_mean"), dtype=pdt),
                                                 jnp.asarray(cell.init("running_var"), dtype=pdt)))
        cell.bn, cell.state = bn, state
        cell.params = {n: jnp.asarray(cell.init(n), dtype=pdt) for n in ("weight", "bias")} if L.affine else {}

    def forward(self, cell, x, mode):
        import equinox as eqx
        import jax
        import jax.numpy as jnp

        inference = not uses_batch_stats(cell.case, mode)
        bn, state = cell.bn, cell.state

        def f(params, x):
            layer = eqx.tree_at(lambda m: (m.weight, m.bias), bn, (params["weight"], params["bias"])) \
                if params else bn
            return jax.vmap(lambda xi, s: layer(xi, s, inference=inference), axis_name="batch",
                            in_axes=(0, None), out_axes=(0, None))(x, state)

        y, cell.vjp, new_state = jax.vjp(f, cell.params, jnp.asarray(x, dtype=cell.dtype), has_aux=True)
        if not inference:
            cell.state = new_state
        return y

    def backward(self, cell, grad_output, retain):
        import jax.numpy as jnp

        cell.grads, gx = cell.vjp(jnp.asarray(grad_output, dtype=cell.dtype))
        return gx, {n: cell.grads[n] for n in cell.trainable}

    def sgd_step(self, cell, lr):
        for n in cell.trainable:
            cell.params[n] = cell.params[n] - lr * cell.grads[n]

    def state(self, cell):
        mean, var = cell.state.get(cell.bn.batch_state_index)
        return {"running_mean": mean, "running_var": var, **cell.params}

    def to_numpy(self, value):
        import numpy as np

        a = np.asarray(value)
        return a.astype(np.float32) if a.dtype.name == "bfloat16" else a
