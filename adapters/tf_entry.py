"""More TensorFlow entry points to the fused batch-norm kernel (issue 20),
tensorflow-cpu 2.21.0.

* ``tf.compat.v1.nn.fused_batch_norm[tf.function(jit_compile=True)]`` — the
  :class:`adapters.tf_nn.FusedBatchNorm` program compiled by XLA: the op is
  lowered by ``tensorflow/compiler/tf2xla/kernels/batch_norm_op.cc`` (XLA
  ``BatchNormTraining`` / ``BatchNormInference`` plus the running-average
  arithmetic), not by the CPU kernel ``tensorflow/core/kernels/fused_batch_norm_op.cc``.
* ``tf.raw_ops.FusedBatchNormV3`` — the op itself, as generated code and
  converters call it: ``(x, scale, offset, mean, variance, epsilon,
  exponential_avg_factor, data_format, is_training)`` -> ``(y, batch_mean,
  batch_variance, reserve_space_1, reserve_space_2, reserve_space_3)``; in
  training ``batch_mean`` / ``batch_variance`` ARE the updated running
  statistics ``(1 - f) * running + f * batch`` (``f = exponential_avg_factor``,
  the catalogue's momentum), and with ``f = 1`` the ``mean``/``variance``
  inputs must be empty (``tensorflow/core/kernels/fused_batch_norm_op.cc``,
  ``FusedBatchNormOpBase::ComputeWithReservedSpace``). Also under
  ``tf.function(jit_compile=True)``.

Idioms as in :mod:`adapters.tf_nn`: running statistics in ``tf.Variable``s the
outputs are assigned to, gradients from ``tf.GradientTape``, SGD by
``assign_sub``; formats NCHW/NHWC/NCDHW/NDHWC, no float64 kernel.
"""

from __future__ import annotations

from .tf_nn import FusedBatchNorm


class _Compiled(FusedBatchNorm):
    jit_compile = True

    def normalize(self, cell, x, training):
        tf = self.tf
        fn = cell.fns.get(bool(training))
        if fn is None:
            eager = self.eager_normalize
            fn = cell.fns[bool(training)] = tf.function(lambda x: eager(cell, x, training),
                                                         jit_compile=self.jit_compile)
        return fn(x)


class FusedBatchNormXLA(_Compiled):
    name = "tf.compat.v1.nn.fused_batch_norm[tf.function(jit_compile=True)]"

    def eager_normalize(self, cell, x, training):
        return FusedBatchNorm.normalize(self, cell, x, training)


class RawFusedBatchNormV3(FusedBatchNorm):
    name = "tf.raw_ops.FusedBatchNormV3"

    def normalize(self, cell, x, training):
        return self.eager_normalize(cell, x, training)

    def eager_normalize(self, cell, x, training):
        tf, case, state = self.tf, cell.case, cell.vars
        L = case.layer
        fmt = self._FORMATS[(len(case.input.shape), case.input.axis)]
        c = L.num_features
        scale = state["weight"] if "weight" in state else tf.ones([c], tf.float32)
        offset = state["bias"] if "bias" in state else tf.zeros([c], tf.float32)
        op = tf.raw_ops.FusedBatchNormV3
        empty = tf.zeros([0], tf.float32)
        if not training:
            return op(x=x, scale=scale, offset=offset, mean=state["running_mean"], variance=state["running_var"],
                      epsilon=L.eps, data_format=fmt, is_training=False)[0]
        tracked = "running_mean" in state
        factor = L.momentum if tracked else 1.0
        if factor == 1.0:  # the op demands empty mean/variance inputs then
            out = op(x=x, scale=scale, offset=offset, mean=empty, variance=empty, epsilon=L.eps,
                     exponential_avg_factor=1.0, data_format=fmt, is_training=True)
        else:
            out = op(x=x, scale=scale, offset=offset, mean=state["running_mean"], variance=state["running_var"],
                     epsilon=L.eps, exponential_avg_factor=factor, data_format=fmt, is_training=True)
        if tracked:
            state["running_mean"].assign(out[1])
            state["running_var"].assign(out[2])
        return out[0]


class RawFusedBatchNormV3XLA(_Compiled, RawFusedBatchNormV3):
    name = "tf.raw_ops.FusedBatchNormV3[tf.function(jit_compile=True)]"

    def eager_normalize(self, cell, x, training):
        return RawFusedBatchNormV3.eager_normalize(self, cell, x, training)
