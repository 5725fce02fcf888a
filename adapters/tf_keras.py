"""Adapters for tf-keras (Keras 2, package ``tf-keras``) ``BatchNormalization``
with ``fused=True`` and ``fused=False`` (``tf_keras/src/layers/normalization/batch_normalization.py``).

Semantics relied on (tf-keras 2.21.0, read in the installed source):

* ``fused=True`` calls ``tf.compat.v1.nn.fused_batch_norm`` with
  ``exponential_avg_factor = 1 - momentum`` in eager mode: the kernel updates
  the moving variance with the batch variance WITH Bessel's correction
  (``_bessels_correction_test_only = True``: the layer leaves it in) — the
  unbiased, canonical estimate. It only applies to rank-4/5 inputs with the
  channel on axis 1 or 3 (rank 4) / 1 or 4 (rank 5) and a compute dtype of
  float16, bfloat16 or float32 (``_raise_if_fused_cannot_be_used``, ``build``).
* ``fused=False`` computes ``tf.nn.moments`` (biased) and updates with
  ``_assign_moving_average``: ``moving -= (moving - batch) * (1 - momentum)``:
  the BIASED variance (TF issue #55545), in a form that rounds at the scale of
  the OLD moving value (oracle knob ``ema_form: subtract``).
* ``trainable = False`` makes ``call`` run in inference mode even with
  ``training=True`` (TF >= 2.0 behaviour): our ``train_global_stats``.
* float16/bfloat16 inputs: mixed-precision policies (float32 variables); both
  paths compute the statistics in float32.

Idioms translated: ``momentum`` -> ``1 - m``; ``eval`` -> ``training=False``;
``frozen`` -> the variable left out of the gradient list and of
``optimizer.apply_gradients`` (tf.Variables' ``trainable`` cannot change after
creation); ``backward`` -> ``tf.GradientTape`` (persistent: several backwards
of one forward); ``sgd_step`` -> ``tf_keras.optimizers.SGD(lr).apply_gradients``.
"""

from __future__ import annotations


from bnconform.adapter import Adapter
from bnconform.catalogue import OBSERVABLES, Case

from ._keras import load_initial_state
from ._tf import TFTape
from .keras3 import LOGICAL_CPUS, logical_cpus
from .keras_mirrored import MirroredReplicas as _TFKerasMirrored

_POLICY = {"float64": "float64", "float32": "float32", "float16": "mixed_float16", "bfloat16": "mixed_bfloat16"}


def keras2():
    """The Keras 2 module: ``tf_keras`` (the package, from TF 2.14.1), else ``tf.keras`` where
    TensorFlow < 2.16 still bundles Keras 2 (TF 2.12/2.13: the same code base, split out as tf-keras).

    The rows' only version-dependent translation (issue 17's release sweep); TF >= 2.16 without
    tf-keras has Keras 3 as ``tf.keras``, which is the ``keras`` adapters' business: ImportError."""
    try:
        import tf_keras

        return tf_keras
    except ImportError:
        import tensorflow as tf
        from packaging.version import Version

        if Version(tf.__version__) >= Version("2.16"):
            raise
        return tf.keras


class _TFKeras(TFTape, Adapter):
    framework = "tf_keras"
    fused: bool | None = None
    observables = frozenset(OBSERVABLES) - {"num_batches_tracked"}

    def framework_version(self) -> str:
        """tf-keras's version; for TF's bundled Keras 2 (TF < 2.16 without tf-keras) the ``keras``
        2.x package version that ``tf.keras`` is (e.g. 2.12.0)."""
        # The MirroredStrategy row's replicas are logical CPUs: configured before TF initialises.
        logical_cpus(LOGICAL_CPUS)
        k = keras2()
        return str(getattr(k, "__version__", None) or __import__("keras").__version__)

    def capabilities(self, case: Case) -> str | None:
        L = case.layer
        if case.uses_cumulative_average:
            return ("tf-keras BatchNormalization takes a float momentum (decay); it has no cumulative average "
                    "(PyTorch's momentum=None) and no batch counter")
        if not L.track_running_stats:
            return ("tf-keras BatchNormalization always keeps moving_mean/moving_variance and training=False always "
                    "normalises with them; there is no track_running_stats=False")
        return None

    def build(self, cell):
        tf_keras = keras2()
        case, L, dt = cell.case, cell.case.layer, cell.dtype
        policy = _POLICY[dt] if dt in ("float32", "float64") else tf_keras.mixed_precision.Policy(_POLICY[dt])
        layer = cell.layer = tf_keras.layers.BatchNormalization(
            axis=case.input.axis, momentum=L.decay, epsilon=L.eps, center=L.affine, scale=L.affine,
            fused=self.fused, dtype=policy)
        load_initial_state(cell, layer)

    def forward(self, cell, x, mode):
        cell.layer.trainable = mode != "train_global_stats"
        y = self.record(cell, lambda x: cell.layer(x, training=mode != "eval"), self.constant(x, cell.dtype))
        cell.layer.trainable = True
        return y

    def backward(self, cell, grad_output, retain):
        dx, grads = self.tape_gradient(cell, grad_output, [cell.named[n] for n in cell.trainable])
        return dx, dict(zip(cell.trainable, grads))

    def sgd_step(self, cell, lr):
        tf_keras = keras2()
        if cell.trainable:
            learn = [cell.named[n] for n in cell.trainable]
            tf_keras.optimizers.SGD(learning_rate=lr).apply_gradients(zip(cell.grads, learn))

    def state(self, cell):
        return {"running_mean": cell.layer.moving_mean, "running_var": cell.layer.moving_variance, **cell.named}


class BatchNormalizationFused(_TFKeras):
    """``tf_keras.layers.BatchNormalization(fused=True)``: ``FusedBatchNormV3``."""

    name, fused = "tf_keras.layers.BatchNormalization(fused=True)", True

    def capabilities(self, case: Case) -> str | None:
        reason = super().capabilities(case)
        if reason:
            return reason
        rank, axis = len(case.input.shape), case.input.axis
        if rank not in (4, 5) or axis not in (1, rank - 1):
            return (f"fused=True only takes rank-4 input with axis 1 or 3 or rank-5 input with axis 1 or 4 "
                    f"(the case has rank {rank}, channel axis {axis}); tf-keras raises ValueError for rank 2/3 "
                    "and silently falls back to the non-fused path for other rank-5 axes")
        if case.input.dtype == "float64":
            return ("fused=True only supports compute dtypes float16, bfloat16 and float32 "
                    "(FusedBatchNormV3 has no float64 kernel; _raise_if_fused_cannot_be_used)")
        return None


class BatchNormalizationNonFused(_TFKeras):
    """``tf_keras.layers.BatchNormalization(fused=False)``: ``tf.nn.moments`` +
    ``tf.nn.batch_normalization`` + ``_assign_moving_average``."""

    name, fused = "tf_keras.layers.BatchNormalization(fused=False)", False


class BatchNormalizationSyncMirrored(_TFKerasMirrored, _TFKeras):
    """``tf_keras.layers.BatchNormalization(synchronized=True)`` under ``tf.distribute.MirroredStrategy``
    over logical CPUs (the replica cases; the program of :mod:`adapters.keras_mirrored`).

    ``synchronized=True`` forces ``fused=False`` (``BatchNormalization.__init__``);
    ``_sync_calculate_mean_and_var`` all-reduces (SUM) each replica's sum, squared
    sum and count: ``mean = divide_no_nan(sum, count)``, ``variance =
    max(E[x^2] - E[x]^2, 0)`` (one pass), and ``_assign_moving_average`` the
    BIASED variance (``tf-keras-nonfused-biased-moving-variance``). Under a
    strategy ``_support_zero_size_input()`` may replace an empty replica's
    moments by zeros (``tf.where(input_batch_size > 0, ...)``).
    ``sgd_step``: ``tf_keras.optimizers.SGD(lr).apply_gradients`` in each
    replica's context with its local gradients (the optimizer all-reduces them, SUM).
    """

    name = "tf_keras.layers.BatchNormalization(synchronized=True)[MirroredStrategy]"

    def available(self) -> str | None:
        return self.devices_missing()

    def capabilities(self, case: Case) -> str | None:
        return (self.replica_reasons(case, "the rows tf_keras.layers.BatchNormalization(fused=True/False)")
                or _TFKeras.capabilities(self, case))

    def build(self, cell):
        tf_keras = keras2()

        case, L, dt = cell.case, cell.case.layer, cell.dtype
        with self.make_strategy(cell).scope():
            policy = _POLICY[dt] if dt in ("float32", "float64") else tf_keras.mixed_precision.Policy(_POLICY[dt])
            layer = cell.layer = tf_keras.layers.BatchNormalization(
                axis=case.input.axis, momentum=L.decay, epsilon=L.eps, center=L.affine, scale=L.affine,
                synchronized=True, dtype=policy)
            load_initial_state(cell, layer)

    def learned(self, cell):
        return [cell.named[n] for n in cell.trainable]

    def apply_sgd(self, cell, lr, grads):
        tf_keras = keras2()

        learn = self.learned(cell)
        with cell.strategy.scope():
            opt = tf_keras.optimizers.SGD(learning_rate=lr)
        cell.strategy.run(lambda *g: opt.apply_gradients(zip(g, learn)), args=tuple(grads))
