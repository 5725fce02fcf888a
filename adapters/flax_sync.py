"""Synchronized ``flax.linen.BatchNorm(axis_name=...)`` over replicas on JAX host (CPU) devices,
under ``jax.pmap`` and under ``jax.shard_map`` (the replica cases, ``cases/replicas.yaml``).

Semantics relied on (flax 0.12.8, jax 0.10.2), read in ``flax/linen/normalization.py``:

* ``BatchNorm(axis_name=NAME)``: ``_compute_stats`` averages the per-device
  statistics with ``lax.pmean`` over the named axis ("only used for pmap and
  shard map"); with ``use_fast_variance=False`` first ``mu = pmean(mean(x))``,
  then ``var = pmean(mean((x - mu)^2))``: the two-pass variance of the union
  when every device holds the same number of values.
* ``mask``: "Binary array ... indicating the positions for which the mean and
  variance should be computed": each device's means are taken over its masked
  values (``x.mean(axes, where=mask)``) and THEN averaged across devices
  unweighted, so devices with different numbers of valid values are not
  weighted by their counts (google/flax#2417; ``expectations/flax.yaml``
  ``flax-sync-bn-unweighted-replica-mean``), and a device with no valid value
  makes every statistic NaN (0/0 mean).
* Running statistics, ``momentum`` (decay), ``epsilon``: as the eager linen row
  (:mod:`adapters.flax_linen`), the running variance biased
  (``flax-biased-running-var``).

Idioms translated: R replicas are R JAX CPU devices (``XLA_FLAGS=
--xla_force_host_platform_device_count``, set by :mod:`adapters.flax_linen` at
import when jax is not yet imported, and by the tox ``flax`` env). Each
replica's state is its own copy: parameters and ``batch_stats`` are stacked
``(R, C)`` arrays mapped over the replica axis (``pmap`` ``in_axes=0`` /
``shard_map`` ``P(NAME)``), so identical running statistics on every replica
are observed, not assumed. Per-device inputs must have one shape: uneven
per-replica batches are padded to the largest with zeros and passed with a
``mask`` (the Flax idiom for ragged batches); equal ones are passed as they
are, without a mask. ``train_global_stats``/``eval`` -> ``use_running_average=True``.
Backward: inside the mapped function, ``jax.vjp`` of the apply (the forward
recomputed from the same inputs and pre-forward state) with the replica's
``grad_output`` slice; the parameter gradients are ``lax.psum``-ed across
replicas (the data-parallel all-reduce: the gradient of the global loss) and
``sgd_step`` applies them to every replica's copy (``optax.sgd`` with
``optax.set_to_zero`` for frozen parameters, as the eager row).
"""

from __future__ import annotations

import numpy as np

from bnconform.catalogue import Case
from bnconform.drive import updates_running_stats, uses_batch_stats

from .flax_linen import HOST_DEVICES, FlaxLinenBatchNormStableVariance, _PARAM

AXIS = "replica"


class _FlaxSync(FlaxLinenBatchNormStableVariance):
    runs_replicas = True
    #: "pmap" or "shard_map"
    mapping = ""

    def available(self) -> str | None:
        import jax

        n = len(jax.devices("cpu"))
        if n < HOST_DEVICES:
            return (f"{self.name} needs {HOST_DEVICES} JAX host devices, found {n}: set XLA_FLAGS="
                    f"--xla_force_host_platform_device_count={HOST_DEVICES} before jax is imported")
        return None

    def capabilities(self, case: Case) -> str | None:
        if case.replicas is None:
            return (f"a synchronized row: it runs the replica cases (cases/replicas.yaml); one replica is the "
                    f"row flax.linen.BatchNorm[use_fast_variance=False]")
        if len(case.replicas) > HOST_DEVICES:
            return f"{len(case.replicas)} replicas, {HOST_DEVICES} host devices configured"
        return super().capabilities(case)

    def module(self, case: Case, arrays):
        import flax.linen as nn
        import jax.numpy as jnp

        L = case.layer
        half = case.input.dtype in ("float16", "bfloat16")
        return nn.BatchNorm(
            axis=case.input.axis, momentum=L.decay,
            epsilon=L.eps, use_scale=L.affine, use_bias=L.affine, use_fast_variance=False, axis_name=AXIS,
            dtype=getattr(jnp, case.input.dtype) if half else None, param_dtype=getattr(jnp, arrays.param_dtype))

    # ------------------------------------------------------------ replica layout
    def _split(self, cell, a: np.ndarray):
        """The global batch as ``(R, n_max, ...)`` (zero-padded) and the mask (None when even)."""
        import jax.numpy as jnp

        sizes, nmax = cell.case.replicas, max(cell.case.replicas)
        rows = []
        for sl, n in zip(cell.case.replica_slices, sizes):
            part = np.asarray(a[sl])
            pad = np.zeros((nmax - n,) + part.shape[1:], dtype=part.dtype)
            rows.append(np.concatenate([part, pad], axis=0))
        x = jnp.asarray(np.stack(rows), dtype=cell.dtype)
        if len(set(sizes)) == 1:
            return x, None
        mask = np.zeros((len(sizes), nmax) + (1,) * (a.ndim - 1), dtype=bool)
        for r, n in enumerate(sizes):
            mask[r, :n] = True
        return x, jnp.asarray(mask)

    @staticmethod
    def _join(cell, y):
        """``(R, n_max, ...)`` per-replica results back to the global batch (padding dropped)."""
        y = np.asarray(y)
        return np.concatenate([y[r, :n] for r, n in enumerate(cell.case.replicas)], axis=0)

    def _mapped(self, cell, fn, n_in: int):
        """``fn`` mapped over the replica axis: every argument and result has a
        leading replica dimension (pmap ``in_axes=0``; shard_map ``P(AXIS)`` blocks of 1)."""
        import jax
        from jax.sharding import Mesh, PartitionSpec as P

        R = len(cell.case.replicas)
        devices = jax.devices("cpu")[:R]
        if self.mapping == "pmap":
            return jax.pmap(fn, axis_name=AXIS, devices=devices)
        mesh = Mesh(np.array(devices), (AXIS,))

        def blockwise(*args):
            out = fn(*jax.tree_util.tree_map(lambda a: a[0], args))
            return jax.tree_util.tree_map(lambda a: a[None], out)

        return jax.jit(jax.shard_map(blockwise, mesh=mesh, in_specs=(P(AXIS),) * n_in, out_specs=P(AXIS)))

    # ------------------------------------------------------------ interpreter hooks
    def build(self, cell):
        import jax.numpy as jnp

        super().build(cell)
        R = len(cell.case.replicas)
        rep = lambda v: jnp.stack([v] * R)  # noqa: E731 - one copy per replica
        cell.params = {k: rep(v) for k, v in cell.params.items()}
        cell.stats = {k: rep(v) for k, v in cell.stats.items()}
        cell.fns = {}

    def _apply(self, cell, use_ra: bool):
        bn = cell.bn

        def apply(params, stats, x, mask):
            y, upd = bn.apply({"params": params, "batch_stats": stats}, x, use_running_average=use_ra,
                              mutable=["batch_stats"], mask=mask)
            return y, upd["batch_stats"]

        return apply

    def forward(self, cell, x, mode):
        use_ra = not uses_batch_stats(cell.case, mode)
        xs, mask = self._split(cell, x)
        key = ("fwd", use_ra, mask is None)
        if key not in cell.fns:
            apply = self._apply(cell, use_ra)
            if mask is None:
                cell.fns[key] = self._mapped(cell, lambda p, s, x: apply(p, s, x, None), 3)
            else:
                cell.fns[key] = self._mapped(cell, apply, 4)
        args = (cell.params, cell.stats, xs) + (() if mask is None else (mask,))
        y, new_stats = cell.fns[key](*args)
        cell.saved = (use_ra, cell.stats, xs, mask)  # what the backward recomputes the forward from
        if updates_running_stats(cell.case, mode):
            cell.stats = new_stats
        return self._join(cell, y)

    def backward(self, cell, grad_output, retain):
        import jax
        import jax.numpy as jnp

        use_ra, stats, xs, mask = cell.saved
        gs, _ = self._split(cell, grad_output)
        key = ("bwd", use_ra, mask is None)
        if key not in cell.fns:
            apply = self._apply(cell, use_ra)

            def fwd_bwd(params, stats, x, mask, g):
                _, vjp = jax.vjp(lambda p, x: apply(p, stats, x, mask)[0], params, x)
                dparams, dx = vjp(g)
                return dx, jax.lax.psum(dparams, AXIS)  # the data-parallel all-reduce of gradients

            if mask is None:
                cell.fns[key] = self._mapped(cell, lambda p, s, x, g: fwd_bwd(p, s, x, None, g), 4)
            else:
                cell.fns[key] = self._mapped(cell, fwd_bwd, 5)
        args = (cell.params, stats, xs) + (() if mask is None else (mask,)) + (jnp.asarray(gs),)
        dx, cell.grads = cell.fns[key](*args)
        # Every replica holds the all-reduced gradient; replica 0's is reported.
        return self._join(cell, dx), {n: cell.grads[_PARAM[n]][0] for n in cell.trainable}


class FlaxLinenSyncPmap(_FlaxSync):
    """``nn.BatchNorm(axis_name=..., use_fast_variance=False)`` under ``jax.pmap`` over R host devices."""

    name, mapping = "flax.linen.BatchNorm[use_fast_variance=False, axis_name, jax.pmap]", "pmap"


class FlaxLinenSyncShardMap(_FlaxSync):
    """The same under ``jax.jit(jax.shard_map(...))`` over a 1-D mesh of R host devices."""

    name, mapping = "flax.linen.BatchNorm[use_fast_variance=False, axis_name, shard_map]", "shard_map"

    def capabilities(self, case: Case) -> str | None:
        import jax

        if not hasattr(jax, "shard_map"):  # the release sweep's flax-0.7.5 env (jax 0.4.20): AttributeError
            return (f"this row translates to the public jax.shard_map, which jax {jax.__version__} does not have "
                    f"(only jax.experimental.shard_map)")
        return super().capabilities(case)
