"""The Caffe adapter's own protobuf writer: the .caffemodel bytes decode to the
NetParameter layout Caffe and OpenCV read (layer = 100, name 1, type 2,
blobs 7; BlobProto shape 7 / dim 1 packed, data 5 packed float), and — where
OpenCV 4.x is installed — OpenCV imports them and divides by the scale factor."""

import numpy as np
import pytest

from adapters.caffe_opencv import SCALE_FACTOR, caffemodel, prototxt


def _fields(buf: bytes):
    """Minimal protobuf reader: yields (field number, wire type, value)."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 2:
            n, i = _varint(buf, i)
            yield number, wire, buf[i:i + n]
            i += n
        elif wire == 0:
            v, i = _varint(buf, i)
            yield number, wire, v
        else:  # pragma: no cover - the writer emits no other wire types
            raise AssertionError(f"unexpected wire type {wire}")


def _varint(buf: bytes, i: int):
    shift = value = 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, i


def test_caffemodel_layout():
    mean, var = np.array([0.5, -1.0], np.float32), np.array([4.0, 0.25], np.float32)
    data = caffemodel([("bn", "BatchNorm", [mean, var, np.array([SCALE_FACTOR], np.float32)])])
    top = list(_fields(data))
    assert top[0] == (1, 2, b"bn")
    (number, _, layer), = [f for f in top if f[0] == 100]
    parts = list(_fields(layer))
    assert (1, 2, b"bn") in parts and (2, 2, b"BatchNorm") in parts
    blobs = [p[2] for p in parts if p[0] == 7]
    assert len(blobs) == 3
    decoded = []
    for blob in blobs:
        f = {n: v for n, _, v in _fields(blob)}
        (dim_field, _, raw), = list(_fields(f[7]))  # BlobShape: one packed 'dim' field
        assert dim_field == 1
        shape = []
        j = 0
        while j < len(raw):
            d, j = _varint(raw, j)
            shape.append(d)
        decoded.append((shape, np.frombuffer(f[5], "<f4")))
    assert decoded[0][0] == [2] and np.array_equal(decoded[0][1], mean)
    assert decoded[1][0] == [2] and np.array_equal(decoded[1][1], var)
    assert decoded[2][0] == [1] and decoded[2][1][0] == np.float32(SCALE_FACTOR)


def test_prototxt_deploy_phase():
    text = prototxt((2, 3, 4, 4), 1e-5, affine=True)
    assert "use_global_stats: true" in text and 'type: "Scale"' in text and "bias_term: true" in text
    assert 'type: "Scale"' not in prototxt((2, 3), 1e-5, affine=False)


def test_opencv_divides_by_scale_factor(tmp_path):
    cv2 = pytest.importorskip("cv2")
    if not hasattr(cv2, "dnn") or not hasattr(cv2.dnn, "readNetFromCaffe"):
        pytest.skip("this OpenCV has no Caffe importer (5.x removed it)")
    rm, rv = np.array([1.0, -2.0, 0.5], np.float32), np.array([4.0, 0.25, 1.0], np.float32)
    s = np.float32(SCALE_FACTOR)
    (tmp_path / "d.prototxt").write_text(prototxt((2, 3, 2, 2), 1e-5, affine=False))
    (tmp_path / "m.caffemodel").write_bytes(caffemodel([("bn", "BatchNorm", [rm * s, rv * s, np.array([s])])]))
    net = cv2.dnn.readNetFromCaffe(str(tmp_path / "d.prototxt"), str(tmp_path / "m.caffemodel"))
    x = np.random.default_rng(0).standard_normal((2, 3, 2, 2)).astype(np.float32)
    net.setInput(x)
    y = net.forward()
    want = (x - rm[None, :, None, None]) / np.sqrt(rv[None, :, None, None] + 1e-5)
    assert np.abs(y - want).max() < 1e-5
