"""Adapter for a Caffe deploy net (``BatchNorm`` + ``Scale``) run through
OpenCV's DNN module (``cv2.dnn.readNetFromCaffe``; opencv-python-headless 4.x —
5.x removed the Caffe importer).

No Caffe runtime installs here (BVLC Caffe is unmaintained, no wheels), so only
the DEPLOY phase is exercised: for each case the adapter writes a real Caffe
``.prototxt`` and a BINARY ``.caffemodel`` and lets OpenCV import both.

Caffe semantics (``src/caffe/layers/batch_norm_layer.cpp``, ``src/caffe/proto/caffe.proto``):

* ``BatchNorm`` has no affine part; gamma and beta live in a following
  ``Scale`` layer with ``bias_term: true`` (the Caffe ResNet idiom).
* Its three blobs are accumulators: ``blobs[0] = sum of lambda^k * mean``,
  ``blobs[1] = ... * var``, ``blobs[2] = s`` (the accumulated scale factor);
  with ``use_global_stats: true`` it normalises with ``mean = blobs[0] / s``
  and ``var = blobs[1] / s`` (``scale_factor = s == 0 ? 0 : 1 / s``), then
  ``y = (x - mean) / sqrt(var + eps)``; ``eps`` is a ``float`` field
  (default 1e-5).

The adapter stores the case's running statistics as ``blobs = (mean * s,
var * s, [s])`` with ``s = 0.999`` (a net trained for a while has ``s`` =
sum of lambda^k, not 1), so the division is exercised.

OpenCV (``modules/dnn/src/layers/batch_norm_layer.cpp``, ``BatchNormLayerImpl``):
divides by ``blobs[2]`` when present (``varMeanScale = 1 / blobs[2]``, 0 stays
0), folds the layer into a per-channel ``y = w * x + b`` with ``w = 1 /
sqrt(var * varMeanScale + eps)``, ``b = -w * mean * varMeanScale``, fuses the
following ``Scale`` into it (``tryFuse``), and computes in float32 on
(N, C, ...) blobs. With ``use_global_stats: false`` it refuses batches > 1
("Batch normalization in training mode with batch size > 1").

Observables: the deploy net is stateless; only ``output`` is observed.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np

from bnconform.adapter import Adapter
from bnconform.catalogue import Backward, Case, Forward, SgdStep

#: Caffe's accumulated scale factor written into blobs[2] (exercises the division).
SCALE_FACTOR = 0.999


# ---------------------------------------------------------------- tiny protobuf writer
def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _blob(values: np.ndarray) -> bytes:
    """caffe.BlobProto: shape (7) = BlobShape{dim (1), packed int64}; data (5), packed float."""
    values = np.ascontiguousarray(values, dtype="<f4")
    shape = _field(1, b"".join(_varint(int(d)) for d in values.shape))
    return _field(7, shape) + _field(5, values.tobytes())


def _layer(name: str, type_: str, blobs: list[np.ndarray]) -> bytes:
    """caffe.LayerParameter: name (1), type (2), blobs (7)."""
    return _field(1, name.encode()) + _field(2, type_.encode()) + b"".join(_field(7, _blob(b)) for b in blobs)


def caffemodel(layers: list[tuple[str, str, list[np.ndarray]]]) -> bytes:
    """caffe.NetParameter: name (1), layer (100)."""
    return _field(1, b"bn") + b"".join(_field(100, _layer(*spec)) for spec in layers)


def prototxt(shape: tuple[int, ...], eps: float, affine: bool) -> str:
    dims = " ".join(f"dim: {d}" for d in shape)
    text = (f'name: "bn"\ninput: "data"\ninput_shape {{ {dims} }}\n'
            f'layer {{ name: "bn" type: "BatchNorm" bottom: "data" top: "bn"\n'
            f'  batch_norm_param {{ use_global_stats: true eps: {eps!r} }} }}\n')
    if affine:
        text += ('layer { name: "scale" type: "Scale" bottom: "bn" top: "scale"\n'
                 '  scale_param { bias_term: true } }\n')
    return text


class CaffeDeployOpenCV(Adapter):
    name = "caffe BatchNorm+Scale (OpenCV dnn deploy)"
    framework = "cv2"
    observables = frozenset({"output"})

    def capabilities(self, case: Case) -> str | None:
        if any(isinstance(s, (Backward, SgdStep)) or (isinstance(s, Forward) and s.mode != "eval")
               for s in case.steps):
            return ("no Caffe runtime installs here; OpenCV DNN implements the deploy (use_global_stats) "
                    "phase only: train-phase forwards, backward and solver steps are not expressible")
        if not case.layer.track_running_stats:
            return ("a Caffe deploy net without global statistics (use_global_stats: false) normalises with "
                    "batch statistics, which OpenCV DNN refuses for batches > 1 (batch_norm_layer.cpp)")
        if case.input.dtype != "float32":
            return f"OpenCV DNN runs Caffe nets in float32 on the CPU; {case.input.dtype} input is not expressible"
        if case.input.axis != 1:
            return ("Caffe blobs are (N, C, ...) with the channel at axis 1; "
                    f"channel_axis={case.input.channel_axis} is not expressible")
        if case.input.shape[0] == 0:
            return "a Caffe input_shape needs dimensions >= 1 (no empty batch)"
        return None

    def build(self, cell):
        import cv2

        L, s = cell.case.layer, np.float32(SCALE_FACTOR)
        rm = np.asarray(cell.arrays.init["running_mean"], np.float32)
        rv = np.asarray(cell.arrays.init["running_var"], np.float32)
        layers = [("bn", "BatchNorm", [rm * s, rv * s, np.array([s], np.float32)])]
        if L.affine:
            layers.append(("scale", "Scale", [np.asarray(cell.arrays.init["weight"], np.float32),
                                              np.asarray(cell.arrays.init["bias"], np.float32)]))
        with tempfile.TemporaryDirectory(prefix="bnconform-caffe-") as tmp:  # OpenCV parses both files at import
            proto, model = os.path.join(tmp, "deploy.prototxt"), os.path.join(tmp, "bn.caffemodel")
            with open(proto, "w", encoding="utf-8") as f:
                f.write(prototxt(tuple(cell.case.input.shape), L.eps, L.affine))
            with open(model, "wb") as f:
                f.write(caffemodel(layers))
            cell.net = cv2.dnn.readNetFromCaffe(proto, model)
        cell.net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
        cell.net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)

    def forward(self, cell, x, mode):  # mode is eval (capabilities)
        cell.net.setInput(np.ascontiguousarray(x, np.float32))
        return np.asarray(cell.net.forward()).reshape(cell.case.input.shape)
