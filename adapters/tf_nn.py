"""Adapters for TensorFlow's low-level batch-norm functions, driven as users
write a BatchNorm with them (``tensorflow/python/ops/nn_impl.py``).

``MomentsBatchNormalization`` — ``tf.nn.moments`` + ``tf.nn.batch_normalization``
with the running statistics kept in ``tf.Variable``s and updated the way
TensorFlow's own layers do it (``moving_averages.assign_moving_average``,
tf-keras ``_assign_moving_average``)::

    mean, var = tf.nn.moments(x, axes)                 # biased variance
    moving.assign_sub((moving - batch) * (1 - decay))  # decay = 1 - momentum

with tf-keras' zero-size guard (the delta is 0 for an empty batch). Half
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

import numpy as np

from bnconform.adapter import Adapter
from bnconform.catalogue import OBSERVABLES, Backward, Case, Forward, SgdStep


class _TFFunctional(Adapter):
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

    def numpy(self, t) -> np.ndarray:
        tf = self.tf
        if t.dtype == tf.bfloat16:
            t = tf.cast(t, tf.float32)
        return np.array(t, copy=True)

    def normalize(self, x, state, training: bool, case: Case):
        """Return ``y`` (running statistics updated in ``state`` when ``training``)."""
        raise NotImplementedError

    def run(self, case, arrays):
        tf, L, dt, pdt = self.tf, case.layer, case.input.dtype, arrays.param_dtype
        state = {}
        if L.track_running_stats:
            state["running_mean"] = tf.Variable(np.asarray(arrays.init["running_mean"], dtype=pdt), trainable=False)
            state["running_var"] = tf.Variable(np.asarray(arrays.init["running_var"], dtype=pdt), trainable=False)
        params = {}
        if L.affine:
            params = {n: tf.Variable(np.asarray(arrays.init[n], dtype=pdt)) for n in ("weight", "bias")}
        state.update(params)
        learn = [(n, v) for n, v in params.items() if n not in L.frozen]
        need_grad = any(isinstance(s, Backward) for s in case.steps)
        obs, tape, x, y, grads = {}, None, None, None, []
        for i, step in enumerate(case.steps):
            if isinstance(step, Forward):
                x = tf.cast(tf.constant(np.ascontiguousarray(arrays.batches[step.batch])), getattr(tf, dt))
                training = step.mode == "train" or not L.track_running_stats
                tape = tf.GradientTape(persistent=True) if need_grad else None
                if tape is not None:
                    with tape:
                        tape.watch(x)
                        y = self.normalize(x, state, training, case)
                else:
                    y = self.normalize(x, state, training, case)
                obs[(i, "output")] = self.numpy(y)
            elif isinstance(step, Backward):
                g = tf.cast(tf.constant(np.ascontiguousarray(arrays.grad_outputs[i])), getattr(tf, dt))
                dx, *grads = tape.gradient(y, [x] + [v for _, v in learn], output_gradients=g)
                obs[(i, "grad_input")] = self.numpy(dx)
                for (name, _), grad in zip(learn, grads):
                    obs[(i, f"grad_{name}")] = self.numpy(grad)
            elif isinstance(step, SgdStep):
                for (_, var), grad in zip(learn, grads):
                    var.assign_sub(step.lr * grad)
            for name, var in state.items():
                obs[(i, name)] = self.numpy(var)
        return obs


class MomentsBatchNormalization(_TFFunctional):
    """``tf.nn.moments`` + ``tf.nn.batch_normalization`` + ``assign_sub`` EMA."""

    name = "tf.nn.moments+tf.nn.batch_normalization"
    def normalize(self, x, state, training, case):
        tf, L, axis = self.tf, case.layer, case.input.axis
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

    def normalize(self, x, state, training, case):
        tf, L = self.tf, case.layer
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
