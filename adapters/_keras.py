"""Shared translation of Keras 3 ``keras.layers.BatchNormalization`` to the
step interpreter's hooks (no judging here); the backend-specific parts
(tensor conversion, autodiff) are the ``to_backend`` / ``call`` /
``differentiate`` hooks of the subclasses in :mod:`adapters.keras3`.

Idioms (keras 3.15.1, ``keras/src/layers/normalization/batch_normalization.py``):
``momentum`` -> the decay ``1 - m``; ``eval`` -> ``training=False``;
``train_global_stats`` -> ``layer.trainable = False`` with ``training=True``
(``call`` uses batch statistics only ``if training and self.trainable``);
``frozen`` -> ``variable.trainable = False`` and left out of the gradient
list and of ``keras.optimizers.SGD(learning_rate).apply(grads, variables)``.
"""

from __future__ import annotations

import numpy as np

from bnconform.adapter import Adapter


def load_initial_state(cell, layer) -> None:
    """Build a Keras-style BatchNormalization layer (Keras 3 or tf-keras: the same
    ``moving_mean`` / ``moving_variance`` / ``gamma`` / ``beta`` variables) for the
    case's input shape and assign the case's initial state; ``cell.named`` maps
    ``weight``/``bias`` to gamma/beta (empty when the layer is not affine)."""
    layer.build(tuple(cell.case.input.shape))
    layer.moving_mean.assign(cell.init("running_mean"))
    layer.moving_variance.assign(cell.init("running_var"))
    cell.named = {"weight": layer.gamma, "bias": layer.beta} if cell.case.layer.affine else {}
    for name, var in cell.named.items():
        var.assign(cell.init(name))


class KerasLayer(Adapter):
    """``keras.layers.BatchNormalization`` built, called and stepped through the hooks."""

    #: Keras dtype policy per input dtype (half inputs: float32 variables, half compute)
    policy: dict[str, str] = {}

    # ------------------------------------------------------------ backend hooks
    def to_backend(self, a: np.ndarray, dtype: str):
        raise NotImplementedError

    def to_numpy(self, t) -> np.ndarray:
        import keras

        return keras.ops.convert_to_numpy(t)

    def call(self, cell, x, training: bool):
        """Run ``cell.layer`` on ``x``; return ``(y, ctx)``, ``ctx`` what :meth:`differentiate` needs."""
        raise NotImplementedError

    def differentiate(self, cell, ctx, g, retain: bool):
        """Return ``(dx, [d variable for cell.learn])``."""
        raise NotImplementedError

    # ------------------------------------------------------------ interpreter hooks
    @staticmethod
    def _flags(cell) -> None:
        """``variable.trainable``: False for the case's frozen parameters, True otherwise."""
        for name, var in cell.named.items():
            var.trainable = name not in cell.frozen

    def build(self, cell):
        import keras

        L, case = cell.case.layer, cell.case
        layer = cell.layer = keras.layers.BatchNormalization(
            axis=case.input.axis, momentum=L.decay, epsilon=L.eps, center=L.affine, scale=L.affine,
            dtype=self.policy[case.input.dtype])
        load_initial_state(cell, layer)
        cell.learn = [cell.named[n] for n in cell.trainable]

    def forward(self, cell, x, mode):
        # Layer.trainable's setter also rewrites every weight's trainable flag
        # (and, on torch, requires_grad): set the per-variable flags after it.
        cell.layer.trainable = mode != "train_global_stats"
        self._flags(cell)
        y, cell.ctx = self.call(cell, self.to_backend(x, cell.dtype), mode != "eval")
        cell.layer.trainable = True
        self._flags(cell)
        return y

    def backward(self, cell, grad_output, retain):
        dx, cell.grads = self.differentiate(cell, cell.ctx, self.to_backend(grad_output, cell.dtype), retain)
        return dx, dict(zip(cell.trainable, cell.grads))

    def sgd_step(self, cell, lr):
        import keras

        if cell.learn:
            keras.optimizers.SGD(learning_rate=lr).apply(list(cell.grads), cell.learn)

    def state(self, cell):
        return {"running_mean": cell.layer.moving_mean.value, "running_var": cell.layer.moving_variance.value,
                **{name: var.value for name, var in cell.named.items()}}
