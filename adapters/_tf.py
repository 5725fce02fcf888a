"""Shared TensorFlow translation for the TF-based adapters (no judging here):
NumPy in as a ``tf.constant`` of the case's dtype, and a persistent
``tf.GradientTape`` (``tensorflow/python/eager/backprop.py``) around each
forward of a program with a backward — persistent so that several backwards
of one forward each get fresh gradients (``tape.gradient`` never accumulates).
"""

from __future__ import annotations

import numpy as np


class TFTape:
    """Mixin for :class:`bnconform.adapter.Adapter` subclasses; stores
    ``tape``, ``x``, ``y`` and ``grads`` on the cell."""

    @staticmethod
    def constant(a: np.ndarray, dtype: str):
        """NumPy (storage dtype) -> ``tf.Tensor`` of ``dtype`` (e.g. ``"bfloat16"``)."""
        import tensorflow as tf

        return tf.cast(tf.constant(np.ascontiguousarray(a)), getattr(tf, dtype))

    def record(self, cell, fn, x):
        """``fn(x)``, on a persistent tape watching ``x`` when the program has a backward."""
        import tensorflow as tf

        cell.tape, cell.x = None, x
        if not cell.needs_grad:
            cell.y = fn(x)
            return cell.y
        cell.tape = tf.GradientTape(persistent=True)
        with cell.tape:
            cell.tape.watch(x)
            cell.y = fn(x)
        return cell.y

    def tape_gradient(self, cell, grad_output: np.ndarray, variables: list):
        """``(dx, [d variable])`` of the latest forward for ``grad_output``; the
        parameter gradients are kept as ``cell.grads`` for the optimizer."""
        dx, *cell.grads = cell.tape.gradient(cell.y, [cell.x] + list(variables),
                                             output_gradients=self.constant(grad_output, cell.dtype))
        return dx, cell.grads

    def to_numpy(self, t) -> np.ndarray:
        import tensorflow as tf

        if t.dtype == tf.bfloat16:
            t = tf.cast(t, tf.float32)
        return np.asarray(t)
