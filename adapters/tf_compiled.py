"""Compiled TensorFlow execution paths of BatchNorm: ``tf.function`` with and
without ``jit_compile=True`` (XLA, here on CPU), and Keras'
``BatchNormalization(synchronized=True)`` on a single replica.

Each adapter runs the EAGER adapter's exact program (``adapters/keras3.py``
``BatchNormalizationTF``, ``adapters/tf_nn.py`` ``MomentsBatchNormalization``);
only the forward call is wrapped in ``tf.function`` — the way a user compiles
a training step — so the eager rows beside them show any difference one glance
away. The ``tf.GradientTape`` of the eager program records the call of the
compiled function as one op; ``tape.gradient`` then runs the gradient function
TensorFlow derives from the traced graph. For ``jit_compile=True`` that backward
function carries ``_XlaMustCompile=true`` as well
(``tensorflow/python/eager/polymorphic_function/polymorphic_function.py`` sets
it, ``atomic_function.py`` passes it to the call): verified on TF 2.21.0 with
``XLA_FLAGS=--xla_dump_to=DIR``, which dumps one XLA module for the forward and
one named ``a_inference___backward_..._XlaMustCompile_true_...`` for the
gradient, so forward AND backward run XLA-compiled.
A compile failure surfaces as the framework's exception (an ``error`` cell).

Tracing: Python values are frozen into a trace. One ``tf.function`` is made
per layer instance and per Python configuration the call depends on —
``training`` and, for Keras, ``layer.trainable`` (``BatchNormalization.call``
tests ``training and self.trainable`` in Python; Keras itself rebuilds its
``train_function`` on ``compile()`` after ``trainable`` changes, as its
fine-tuning guide demands) —, so no case runs a stale trace. Variables (moving
statistics, gamma/beta) are captured by reference: their updates are the
compiled graph's ``assign`` ops, as in ``model.fit``.

``synchronized=True`` (keras 3.15.1, ``keras/src/backend/tensorflow/nn.py``
``moments`` -> ``_compute_moments_sync``): whenever a replica context exists —
and OUTSIDE any strategy ``tf.distribute.get_replica_context()`` returns the
default strategy's replica context, never None — the statistics are computed
as ``E[x^2] - E[x]^2`` (clamped at 0) from all-reduced sums, with
``divide_no_nan`` for the mean; not ``tf.nn.moments``' two-pass form.
"""

from __future__ import annotations

import numpy as np

from bnconform.adapter import Divergence
from bnconform.catalogue import Case

from .keras3 import KERAS_BIASED_MOVING_VARIANCE, BatchNormalizationTF, _empty_batch
from .tf_nn import MomentsBatchNormalization


class _KerasTFFunction(BatchNormalizationTF):
    jit_compile: bool = False

    def build(self, cell):
        super().build(cell)
        cell.fns = {}

    def layer_call(self, cell, x, training):
        """The ``tf.function`` traced for this (training, trainable) configuration of the cell's layer."""
        import tensorflow as tf

        layer, key = cell.layer, (bool(training), bool(cell.layer.trainable))
        fn = cell.fns.get(key)
        if fn is None:
            fn = cell.fns[key] = tf.function(lambda x: layer(x, training=training), jit_compile=self.jit_compile)
        return fn(x)


class BatchNormalizationTFFunction(_KerasTFFunction):
    """``tf.function(lambda x: layer(x, training=...))`` (graph mode, no XLA)."""

    name = "keras.layers.BatchNormalization[tensorflow, tf.function]"


class BatchNormalizationTFXLA(_KerasTFFunction):
    """``tf.function(..., jit_compile=True)``: the call compiled by XLA (CPU)."""

    name = "keras.layers.BatchNormalization[tensorflow, tf.function(jit_compile=True)]"
    jit_compile = True


class _MomentsTFFunction(MomentsBatchNormalization):
    jit_compile: bool = False

    def normalize(self, cell, x, training):
        import tensorflow as tf

        fn = cell.fns.get(bool(training))
        if fn is None:
            eager = MomentsBatchNormalization.normalize
            fn = cell.fns[bool(training)] = tf.function(
                lambda x: eager(self, cell, x, training), jit_compile=self.jit_compile)
        return fn(x)


class MomentsTFFunction(_MomentsTFFunction):
    name = "tf.nn.moments+tf.nn.batch_normalization[tf.function]"


class MomentsTFXLA(_MomentsTFFunction):
    name = "tf.nn.moments+tf.nn.batch_normalization[tf.function(jit_compile=True)]"
    jit_compile = True


def _one_pass_ill_conditioned(case: Case) -> bool:
    """Some input batch has a channel with ``mean^2 >= 50 * variance`` (float64
    statistics of the case's arrays). The float32 one-pass variance's relative
    error grows with ``mean^2 / variance``; the bound 50 is MEASURED on the
    catalogue (keras 3.15.1, TF 2.21.0 CPU): every case at or above it fails,
    none below 36 except train-5steps-m0.1 (20.3) and train-5steps-m0.5 (30.3),
    which stay ``fails`` (they interleave with passing cases at 21-36)."""
    from bnconform.arrays import generate
    from bnconform.oracle import batch_stats

    for x in generate(case).batches.values():
        x = np.asarray(x, dtype=np.float64)
        if x.size == 0:
            continue
        mean, var = batch_stats(x, case.input.axis)
        if np.any((var > 0) & (mean**2 >= 50.0 * var)):
            return True
    return False


KERAS_SYNC_ONE_PASS_VARIANCE = Divergence(
    id="keras3-synchronized-one-pass-variance",
    kind="known_bug",
    summary=("synchronized=True computes the batch variance as max(E[x^2] - E[x]^2, 0) from reduced float32 sums "
             "(also on one replica without a strategy: the default replica context): cancellation when a channel's "
             "mean is large against its spread (variance clamped to 0, outputs ~1e3 on large offsets). The "
             "unsynchronized TF path uses tf.nn.moments (two-pass; keras PR #18795 fixed it, not the sync path). "
             "Expected where a channel has mean^2 >= 50 * variance (see _one_pass_ill_conditioned)"),
    source=("keras/src/backend/tensorflow/nn.py (_compute_moments_sync: 'var = E(x^2) - E(x)^2'; "
            "tf.distribute.get_replica_context() is the default context outside strategies)"),
    issue="https://github.com/keras-team/keras/pull/18795",
    finding="findings/keras3_synchronized_one_pass_variance.py",
    observables=("output", "grad_input", "grad_weight", "grad_bias", "running_var"),
    when=_one_pass_ill_conditioned,
)

KERAS_SYNC_EMPTY_BATCH_ZERO = Divergence(
    id="keras3-synchronized-empty-batch-zero-moments",
    kind="known_bug",
    summary=("synchronized=True, training call on an empty batch (N=0): divide_no_nan makes the batch mean and "
             "variance 0, which are averaged into moving_mean / moving_variance (pulled toward 0 by the momentum) "
             "although the batch carries no statistics (unsynchronized Keras writes NaN instead)"),
    source="keras/src/backend/tensorflow/nn.py (_compute_moments_sync: tf.math.divide_no_nan(y_sum, count_sum))",
    finding="findings/keras3_synchronized_one_pass_variance.py",
    observables=("running_mean", "running_var"),
    when=_empty_batch,
)


class BatchNormalizationTFSynchronized(BatchNormalizationTF):
    """``keras.layers.BatchNormalization(synchronized=True)``, eager, no
    distribution strategy (one replica: the default replica context).
    ``synchronized`` is a plain attribute read by ``_moments`` on each call
    (``BatchNormalization.__init__`` only stores it): set on the layer the
    eager program built.

    NOT registered in ``adapters.BUILTIN``: its one-pass-variance known bug is
    selected by a conditioning cut-off fitted to the catalogue, and
    ``train-5steps-m0.1`` / ``train-5steps-m0.5`` (mean^2/var 20-30) fail by
    1.1x / 1.4x the tolerance while cases with larger ratios pass — the row
    would gate on rounding. Run it with
    ``--adapter adapters.tf_compiled:BatchNormalizationTFSynchronized``.
    """

    name = "keras.layers.BatchNormalization[tensorflow, synchronized=True]"
    divergences = (KERAS_BIASED_MOVING_VARIANCE, KERAS_SYNC_EMPTY_BATCH_ZERO, KERAS_SYNC_ONE_PASS_VARIANCE)

    def build(self, cell):
        super().build(cell)
        cell.layer.synchronized = True
