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

from .keras3 import BatchNormalizationTF
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


class BatchNormalizationTFSynchronized(BatchNormalizationTF):
    """``keras.layers.BatchNormalization(synchronized=True)``, eager, no
    distribution strategy (one replica: the default replica context).
    ``synchronized`` is a plain attribute read by ``_moments`` on each call
    (``BatchNormalization.__init__`` only stores it): set on the layer the
    eager program built. Its one-pass variance is an oracle option emulating
    the algorithm at float32 on the case's arrays (``expectations/keras.yaml``).
    """

    name = "keras.layers.BatchNormalization[tensorflow, synchronized=True]"

    def build(self, cell):
        super().build(cell)
        cell.layer.synchronized = True
