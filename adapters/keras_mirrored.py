"""Keras 3 ``keras.layers.BatchNormalization(synchronized=True)`` on TensorFlow under
``tf.distribute.MirroredStrategy`` over logical CPU devices (the replica cases,
``cases/replicas.yaml``).

Semantics relied on (keras 3.15.1, TF 2.21.0; read in the source):

* ``synchronized=True`` -> ``keras/src/backend/tensorflow/nn.py`` ``moments``
  -> ``_compute_moments_sync``: each replica reduces its ``sum(x)``,
  ``sum(x^2)`` and its count; the three are all-reduced (SUM) through the
  replica context, ``mean = divide_no_nan(sum, count)`` and ``variance =
  max(E[x^2] - E[x]^2, 0)``: the union's statistics, weighted by counts,
  with a one-pass variance (``keras3-synchronized-one-pass-variance``,
  ``expectations/keras.yaml``). The moving variance is the biased one
  (``keras3-biased-moving-variance``).
* ``ReplicaContext.all_reduce`` (``tensorflow/python/distribute/distribute_lib.py``)
  is differentiable: "The gradient of an all-sum is itself an all-sum", so
  each replica's input gradient collects every replica's upstream gradient.
* Keras' TF optimizer (``keras/src/backend/tensorflow/optimizer.py``
  ``_backend_update_step``) all-reduces the replicas' gradients with SUM
  (``_all_reduce_sum_gradients``) before updating the mirrored variables.

Idioms translated (the ``tf.distribute`` custom-training-loop guide): R
replicas are R logical CPU devices (``MirroredStrategy`` with
``cross_device_ops=ReductionToOneDevice()``, see :meth:`build`) (``tf.config.set_logical_device_configuration``
before TensorFlow initialises: :func:`adapters.keras3.logical_cpus`, called by
the first keras-tf row to load); the layer and the optimizer are created under
``strategy.scope()`` (mirrored variables, assigned the case's initial state
from the cross-replica context); replica r's rows reach it through
``experimental_distribute_values_from_function`` (uneven and empty per-replica
batches included); forward and backward run in ``strategy.run`` (each replica
its own persistent ``GradientTape``). ``grad_weight``/``grad_bias`` are the
replicas' gradients all-reduced with SUM in the replica context (the gradient
of the global loss; replica 0's copy reported); ``sgd_step`` passes each
replica's LOCAL gradients to ``SGD.apply`` inside ``strategy.run``, which
sums them itself. State is read per replica: ``experimental_local_results``
of each mirrored variable, one row per replica.

Version-dependent translation (the release sweep, issue 17): before keras 3.5.0
the TF optimizer did NOT sum the replicas' gradients on this path. 3.0-3.2
had no all-reduce at all (keras-team/keras#19308); 3.3-3.4 called
``_all_reduce_sum_gradients`` inside ``maybe_merge_call``, i.e. in the
cross-replica context, where ``tf.distribute.get_replica_context()`` is None and
the gradients are returned unreduced (MirroredStrategy uses merge_call unless
``fn`` is XLA-compiled on GPUs only: ``tensorflow/python/distribute/
mirrored_strategy.py`` ``_use_merge_call``); keras-team/keras#19969 ("Actually sum
gradient for tf distribute", keras 3.5.0) moved it out. Each replica then
updates its copy of gamma and beta with its LOCAL gradient and the mirrored
copies diverge: a defect of Keras' optimizer, not of BatchNormalization, that the
oracle's one-state-for-every-replica model cannot express. On those releases
the cases with an ``sgd_step`` are ``unsupported`` with that reason
(:attr:`BatchNormalizationTFMirrored.SGD_SUMS_REPLICAS`); the sweep's shards
keras-tf-3.0.5 ... -3.4.1 measured it (x6e4-2e5 the tolerance on gamma/beta).
"""

from __future__ import annotations

import numpy as np

from packaging.version import Version

from bnconform.catalogue import Case, SgdStep

from .keras3 import LOGICAL_CPUS, BatchNormalizationTF, logical_cpus


class MirroredReplicas:
    """The replica program under ``tf.distribute.MirroredStrategy`` over logical CPUs,
    shared by the Keras 3 and the tf-keras rows: subclasses give the layer's
    variables (:meth:`tf_variable`, :meth:`learned`) and the optimizer step
    (:meth:`apply_sgd`, called in each replica's context with its local gradients)."""

    runs_replicas = True

    def make_strategy(self, cell):
        import tensorflow as tf

        R = len(cell.case.replicas)
        # ReductionToOneDevice: the default collective all-reduce numbers its groups per strategy
        # instance from 1, so strategies over 2 and then 3 devices in one process collide
        # ("joining a group with size3, but that group has size 2 (group_key=1)", measured) and
        # the aborted collective poisons the process. The reduction is the same SUM.
        cell.strategy = tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(R)],
                                                       cross_device_ops=tf.distribute.ReductionToOneDevice())
        return cell.strategy

    def replica_reasons(self, case: Case, one_replica_rows: str) -> str | None:
        if case.replicas is None:
            return f"a synchronized row: it runs the replica cases (cases/replicas.yaml); one replica is {one_replica_rows}"
        if len(case.replicas) > LOGICAL_CPUS:
            return f"{len(case.replicas)} replicas, {LOGICAL_CPUS} logical CPU devices configured"
        return None

    def devices_missing(self) -> str | None:
        n = logical_cpus(LOGICAL_CPUS)
        if n < LOGICAL_CPUS:
            return (f"{self.name} needs {LOGICAL_CPUS} logical CPU devices, TensorFlow has {n}: it was initialised "
                    f"before the adapter could configure them (adapters/keras3.py logical_cpus)")
        return None

    @staticmethod
    def tf_variable(var):
        """The ``tf.Variable`` (a MirroredVariable) behind a layer variable."""
        return var

    def learned(self, cell) -> list:
        """The variables the gradients are taken for (``cell.trainable`` order)."""
        raise NotImplementedError

    def apply_sgd(self, cell, lr, grads) -> None:
        raise NotImplementedError

    def _distribute(self, cell, a: np.ndarray):
        parts = [self.constant(a[sl], cell.dtype) for sl in cell.case.replica_slices]
        return cell.strategy.experimental_distribute_values_from_function(
            lambda ctx: parts[ctx.replica_id_in_sync_group])

    def _local(self, cell, value) -> list:
        return list(cell.strategy.experimental_local_results(value))

    def _components(self, cell) -> list:
        """The per-replica component variables of the moving statistics."""
        return [c for var in (cell.layer.moving_mean, cell.layer.moving_variance)
                for c in self._local(cell, self.tf_variable(var))]

    def _run(self, cell, x, mode, g=None):
        """One ``strategy.run`` of the layer on each replica's rows of ``x`` in
        ``mode``; with ``g``, under a tape, returning ``(y, dx, local grads,
        all-reduced grads)`` per replica."""
        import tensorflow as tf

        layer, training, learn = cell.layer, mode != "eval", self.learned(cell)

        def replica_fn(xr, gr=None):
            if gr is None:
                return layer(xr, training=training)
            ctx = tf.distribute.get_replica_context()
            with tf.GradientTape() as tape:
                tape.watch(xr)
                y = layer(xr, training=training)
            dx, *local = tape.gradient(y, [xr] + learn, output_gradients=gr)
            total = ctx.all_reduce(tf.distribute.ReduceOp.SUM, local) if local else []
            return y, dx, local, total

        self.set_mode(cell, mode)
        try:
            args = (self._distribute(cell, x),) + (() if g is None else (self._distribute(cell, g),))
            return cell.strategy.run(replica_fn, args=args)
        finally:
            self.set_mode(cell, None)

    def set_mode(self, cell, mode) -> None:
        """``layer.trainable = False`` for ``train_global_stats`` (None: back to True)."""
        cell.layer.trainable = mode != "train_global_stats"

    def forward(self, cell, x, mode):
        # The gradient of ReplicaContext.all_reduce all-reduces through the replica context of
        # ITS strategy.run ("Mismatching ReplicaContext" from a later run): the backward
        # recomputes this forward, under a tape, in one strategy.run with the upstream gradient,
        # from the state this forward started from.
        cell.saved = (x, mode, [c.numpy() for c in self._components(cell)])
        ys = self._local(cell, self._run(cell, x, mode))
        return np.concatenate([self.to_numpy(y) for y in ys], axis=0)

    def backward(self, cell, grad_output, retain):
        x, mode, before = cell.saved
        after = [c.numpy() for c in self._components(cell)]
        for c, v in zip(self._components(cell), before):
            c.assign(v)
        try:
            _, dx, local, total = self._run(cell, x, mode, grad_output)
        finally:
            for c, v in zip(self._components(cell), after):  # the forward's update, exactly as it was
                c.assign(v)
        cell.local_grads = local
        dxs = self._local(cell, dx)
        totals = [self._local(cell, t)[0] for t in total]
        return np.concatenate([self.to_numpy(d) for d in dxs], axis=0), dict(zip(cell.trainable, totals))

    def sgd_step(self, cell, lr):
        if cell.trainable:
            self.apply_sgd(cell, lr, cell.local_grads)

    def state(self, cell):
        out = {"running_mean": cell.layer.moving_mean, "running_var": cell.layer.moving_variance, **cell.named}
        return {name: np.stack([self.to_numpy(v) for v in self._local(cell, self.tf_variable(var))])
                for name, var in out.items()}


class BatchNormalizationTFMirrored(MirroredReplicas, BatchNormalizationTF):
    name = "keras.layers.BatchNormalization[tensorflow, synchronized=True, MirroredStrategy]"

    def available(self) -> str | None:
        return BatchNormalizationTF.available(self) or self.devices_missing()

    #: The first keras whose TF optimizer sums the replicas' gradients on the merge_call path (see the module
    #: docstring: keras-team/keras#19969).
    SGD_SUMS_REPLICAS = "3.5.0"

    def capabilities(self, case: Case) -> str | None:
        return (self.replica_reasons(case, "the rows keras.layers.BatchNormalization[tensorflow] and "
                                           "[tensorflow, synchronized=True]")
                or self.sgd_reason(case)
                or BatchNormalizationTF.capabilities(self, case))

    def sgd_reason(self, case: Case) -> str | None:
        import keras

        if any(isinstance(s, SgdStep) for s in case.steps) and Version(keras.__version__) < Version(
                self.SGD_SUMS_REPLICAS):
            return (f"keras {keras.__version__}'s TensorFlow optimizer applies each replica's LOCAL gradient under "
                    f"MirroredStrategy (its all-reduce is skipped on the merge_call path; keras-team/keras#19308, "
                    f"fixed by #19969 in {self.SGD_SUMS_REPLICAS}): the mirrored gamma/beta diverge across replicas, "
                    f"which the oracle's single replica-identical state cannot express")
        return None

    def build(self, cell):
        with self.make_strategy(cell).scope():
            BatchNormalizationTF.build(self, cell)
        cell.layer.synchronized = True

    @staticmethod
    def tf_variable(var):
        return var.value

    def learned(self, cell):
        return [p.value for p in cell.learn]

    def set_mode(self, cell, mode):
        super().set_mode(cell, mode)
        self._flags(cell)

    def apply_sgd(self, cell, lr, grads):
        import keras

        with cell.strategy.scope():
            opt = keras.optimizers.SGD(learning_rate=lr)
            opt.build(cell.learn)
        learn = cell.learn
        # Keras' TF optimizer all-reduces (SUM) the replicas' gradients itself.
        cell.strategy.run(lambda *g: opt.apply(list(g), learn), args=tuple(grads))
