"""``flax.linen.BatchNorm`` under ``jax.jit`` (XLA-compiled on CPU).

Each adapter runs the eager linen adapter's exact program
(:mod:`adapters.flax_linen`, same translation, same expectations in ``expectations/flax.yaml``) but the
layer's ``apply`` is ``jax.jit``-compiled (``use_running_average`` and
``mutable`` static, one compilation per mode), so the report shows the eager
and the jitted rows side by side. The backward is ``jax.vjp`` of the jitted
apply: JAX transposes the ``jit`` (``pjit``) call into another ``jit`` call
(``jax/_src/pjit.py``, ``_pjit_transpose``), so the gradients are computed by
an XLA-compiled program too. ``sgd_step`` stays the eager optax update
(``p - lr * g``; nothing to fuse). A compile failure surfaces as the
framework's exception, i.e. an ``error`` cell with the message.

Semantics relied on: ``jax.jit`` keeps the traced function's semantics
(``jax/_src/api.py`` ``jit``); XLA may fuse and reassociate the reductions,
which the tolerances of the eager row already allow.
"""

from __future__ import annotations

from .flax_linen import FlaxLinenBatchNorm, FlaxLinenBatchNormStableVariance


class _JittedApply:
    """The module with ``apply`` replaced by its ``jax.jit``-compiled version
    (the only call point of the linen adapter's program)."""

    def __init__(self, module):
        import jax

        self._module = module
        self._apply = jax.jit(
            lambda variables, x, use_running_average, mutable: module.apply(
                variables, x, use_running_average=use_running_average, mutable=list(mutable)),
            static_argnums=(2, 3))

    def apply(self, variables, x, *, use_running_average, mutable):
        return self._apply(variables, x, bool(use_running_average), tuple(mutable))


class _Jit:
    def module(self, case, arrays):
        return _JittedApply(super().module(case, arrays))


class FlaxLinenBatchNormJit(_Jit, FlaxLinenBatchNorm):
    """The default (fast-variance) linen row under ``jax.jit``. Its one-pass
    variance is an oracle option emulating the algorithm on the case's arrays
    (``expectations/flax.yaml``), so XLA's reduction order is judged against
    that algorithm's own error, not against a conditioning cut-off."""

    name = "flax.linen.BatchNorm[jax.jit]"


class FlaxLinenBatchNormStableVarianceJit(_Jit, FlaxLinenBatchNormStableVariance):
    name = "flax.linen.BatchNorm[use_fast_variance=False, jax.jit]"
