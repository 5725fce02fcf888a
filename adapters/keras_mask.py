"""``keras.layers.BatchNormalization`` called with a ``mask`` (Keras 3.15.1 on TensorFlow 2.21.0):
the masked-moments code path (issue 20), run with a mask that keeps every position.

``keras/src/layers/normalization/batch_normalization.py``: ``call(inputs, training, mask)`` requires a
mask of one dimension less than the inputs; ``_moments(inputs, mask)`` expands it at the LAST axis and
broadcasts it to the inputs (so the mask idiom is channels-last: the mask covers every axis but the
last), then computes ``mean = sum(where(mask, x, 0)) / (count + backend.epsilon())`` and the variance
``sum(where(mask, x - mean, 0)^2) / (count + backend.epsilon())`` instead of ``ops.moments``. With an
all-True mask the result must equal the unmasked layer's. Everything else as
:class:`adapters.keras3.BatchNormalizationTF`.
"""

from __future__ import annotations

from bnconform.catalogue import Case

from .keras3 import BatchNormalizationTF


class BatchNormalizationTFMasked(BatchNormalizationTF):
    name = "keras.layers.BatchNormalization[tensorflow, mask=all True]"

    def capabilities(self, case: Case) -> str | None:
        reason = super().capabilities(case)
        if reason:
            return reason
        if case.input.axis != len(case.input.shape) - 1:
            return ("BatchNormalization._moments expands the mask at the last axis and broadcasts it to the input "
                    "(keras/src/layers/normalization/batch_normalization.py): the mask idiom needs the channel "
                    f"last; this case has it on axis {case.input.axis} of rank {len(case.input.shape)}")
        return None

    def layer_call(self, cell, x, training):
        import tensorflow as tf

        mask = tf.ones(tf.shape(x)[:-1], dtype=tf.bool)
        return cell.layer(x, training=training, mask=mask)
