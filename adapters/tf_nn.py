"""Adapters for TensorFlow's low-level batch-norm functions, driven as users
write a BatchNorm with them (``tensorflow/python/ops/nn_impl.py``).

``MomentsBatchNormalization`` — ``tf.nn.moments`` + ``tf.nn.batch_normalization``
with the running statistics kept in ``tf.Variable``s and updated the way
TensorFlow's own layers do it (``moving_averages.assign_moving_average``,
tf-keras ``_assign_moving_average``)::

    mean, var = tf.nn.moments(x, axes)                 # biased variance
    moving.assign_sub((moving - batch) * (1 - decay))  # decay = 1 - momentum

with tf-keras' zero-size guard (the delta is 0 for an empty batch). The
subtract form rounds at the scale of ``|moving - batch|`` (the OLD moving
value), not of the result: oracle knob ``ema_form: subtract``. Half
inputs are computed in float32 and the output cast back, as tf-keras'
non-fused path does. ``tf.nn.moments`` returns the population (BIASED)
variance, so the running variance is biased (quirk).

``FusedBatchNorm`` — ``tf.compat.v1.nn.fused_batch_norm(..., is_training=True,
exponential_avg_factor=momentum)`` whose returned running mean/variance are
assigned back to the variables. Verified on TF 2.21.0: the kernel
(``FusedBatchNormV3``, ``tensorflow/core/kernels/fused_batch_norm_op.cc``)
feeds the batch variance WITH Bessel's correction ``m/(m-1)`` into the running
average (canonical, unbiased) while normalising with the biased one. With
``exponential_avg_factor == 1`` the docstring demands ``mean=variance=None``
and the outputs are the batch statistics. Rank 4/5 only, data formats
NHWC/NCHW/NDHWC/NCDHW, ``x`` in half/bfloat16/float32, statistics float32.

Both: ``eval`` and ``train_global_stats`` normalise with the variables
(``is_training=False`` for the fused op); gradients from ``tf.GradientTape``
(persistent); frozen parameters are left out of the gradient list and of the
SGD update; ``sgd_step`` -> ``variable.assign_sub(lr * grad)``.
"""

from __future__ import annotations


from bnconform.adapter import Adapter
from bnconform.catalogue import OBSERVABLES, Case
from bnconform.drive import uses_batch_stats

from ._tf import TFTape


class _TFFunctional(TFTape, Adapter):
    framework = "tensorflow"
    observables = frozenset(OBSERVABLES) - {"num_batches_tracked"}

    @property
    def tf(self):
        import tensorflow as tf

        return tf

    def capabilities(self, case: Case) -> str | None:
        if case.uses_cumulative_average:
            return ("the running statistics are the caller's EMA with a decay; there is no cumulative average "
                    "(PyTorch's momentum=None) and no batch counter in TensorFlow's batch-norm functions")
        return None

    def normalize(self, cell, x, training: bool):
        """Return ``y`` (running statistics updated in ``cell.vars`` when ``training``)."""
        raise NotImplementedError

    def build(self, cell):
        tf, L = self.tf, cell.case.layer
        cell.vars, cell.fns = {}, {}
        if L.track_running_stats:
            for n in ("running_mean", "running_var"):
                cell.vars[n] = tf.Variable(cell.init(n), trainable=False)
        if L.affine:
            cell.vars.update({n: tf.Variable(cell.init(n)) for n in ("weight", "bias")})

    def forward(self, cell, x, mode):
        training = uses_batch_stats(cell.case, mode)
        return self.record(cell, lambda x: self.normalize(cell, x, training), self.constant(x, cell.dtype))

    def backward(self, cell, grad_output, retain):
        dx, grads = self.tape_gradient(cell, grad_output, [cell.vars[n] for n in cell.trainable])
        return dx, dict(zip(cell.trainable, grads))

    def sgd_step(self, cell, lr):
        for name, grad in zip(cell.trainable, cell.grads):
            cell.vars[name].assign_sub(lr * grad)

    def state(self, cell):
        return cell.vars


class MomentsBatchNormalization(_TFFunctional):
    """``tf.nn.moments`` + ``tf.nn.batch_normalization`` + ``assign_sub`` EMA."""

    name = "tf.nn.moments+tf.nn.batch_normalization"

    def normalize(self, cell, x, training):
        tf, case, state = self.tf, cell.case, cell.vars
        L, axis = case.layer, case.input.axis
        ndim = len(case.input.shape)
        axes = [a for a in range(ndim) if a != axis]
        shape = [1] * ndim
        shape[axis] = L.num_features
        xc = tf.cast(x, tf.float32) if x.dtype in (tf.float16, tf.bfloat16) else x
        if training:
            mean, var = tf.nn.moments(xc, axes)
            if "running_mean" in state:
                n = tf.size(xc)
                factor = 1.0 - (1.0 - L.momentum)  # (1 - decay), decay = 1 - momentum, as users write it
                for key, batch in (("running_mean", mean), ("running_var", var)):
                    moving = state[key]
                    delta = (moving - tf.cast(batch, moving.dtype)) * tf.constant(factor, dtype=moving.dtype)
                    moving.assign_sub(tf.where(n > 0, delta, tf.zeros_like(delta)))
        else:
            mean, var = state["running_mean"], state["running_var"]
        cv = lambda v: None if v is None else tf.reshape(tf.cast(v, xc.dtype), shape)  # noqa: E731
        y = tf.nn.batch_normalization(xc, cv(mean), cv(var), cv(state.get("bias")), cv(state.get("weight")), L.eps)
        return tf.cast(y, x.dtype)


class FusedBatchNorm(_TFFunctional):
    """``tf.compat.v1.nn.fused_batch_norm`` with ``exponential_avg_factor``."""

    name = "tf.compat.v1.nn.fused_batch_norm"
    _FORMATS = {(4, 1): "NCHW", (4, 3): "NHWC", (5, 1): "NCDHW", (5, 4): "NDHWC"}

    def capabilities(self, case: Case) -> str | None:
        reason = super().capabilities(case)
        if reason:
            return reason
        rank, axis = len(case.input.shape), case.input.axis
        if (rank, axis) not in self._FORMATS:
            return (f"fused_batch_norm takes 4-D (NHWC/NCHW) or 5-D (NDHWC/NCDHW) input; the case has rank {rank} "
                    f"with the channel on axis {axis}")
        if case.input.dtype == "float64":
            return "FusedBatchNormV3 has no float64 kernel (x: half, bfloat16, float; statistics: float)"
        return None

    def normalize(self, cell, x, training):
        tf, case, state = self.tf, cell.case, cell.vars
        L = case.layer
        fmt = self._FORMATS[(len(case.input.shape), case.input.axis)]
        ones = lambda: tf.ones([L.num_features], tf.float32)  # noqa: E731
        scale = state.get("weight", None)
        offset = state.get("bias", None)
        scale = ones() if scale is None else scale
        offset = tf.zeros([L.num_features], tf.float32) if offset is None else offset
        fused = tf.compat.v1.nn.fused_batch_norm
        if not training:
            y, _, _ = fused(x, scale, offset, mean=state["running_mean"], variance=state["running_var"],
                            epsilon=L.eps, data_format=fmt, is_training=False)
            return y
        if "running_mean" not in state:  # track_running_stats: false -> batch statistics, nothing kept
            y, _, _ = fused(x, scale, offset, epsilon=L.eps, data_format=fmt, is_training=True)
            return y
        factor = L.momentum
        if factor == 1.0:
            y, mean, var = fused(x, scale, offset, epsilon=L.eps, data_format=fmt, is_training=True)
        else:
            y, mean, var = fused(x, scale, offset, mean=state["running_mean"], variance=state["running_var"],
                                 epsilon=L.eps, data_format=fmt, is_training=True, exponential_avg_factor=factor)
        state["running_mean"].assign(mean)
        state["running_var"].assign(var)
        return y
