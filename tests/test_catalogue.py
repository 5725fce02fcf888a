"""Catalogue schema: every bad input gets one clear error naming file, case and field."""

import textwrap

import numpy as np

import pytest

from bnconform.arrays import generate, round_bfloat16
from bnconform.catalogue import CatalogueError, load_catalogue, load_file

GOOD_CASE = """
  - id: ok
    title: ok
    behaviour: ok
    source: [{title: paper}]
    layer: {num_features: 3}
    input: {shape: [2, 3, 4]}
    steps: [{op: forward, mode: train}]
"""


def write(tmp_path, body, name="bad.yaml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(body))
    return p


def error_of(tmp_path, body) -> CatalogueError:
    with pytest.raises(CatalogueError) as info:
        load_file(write(tmp_path, body), tmp_path)
    return info.value


def test_good_file_loads(tmp_path):
    (case,) = load_file(write(tmp_path, "theme: t\ncases:" + GOOD_CASE), tmp_path)
    assert case.id == "ok" and case.file == "bad.yaml" and case.theme == "t"
    assert case.input.reduction_size == 8


@pytest.mark.parametrize("mutation,field,words", [
    ("layer: {num_features: 3, momentun: 0.1}", "layer.momentun", "Extra inputs"),
    ("layer: {num_features: three}", "layer.num_features", "integer"),
    ("layer: {num_features: 3, momentum: 1.5}", "layer.momentum", "less than or equal"),
    ("layer: {num_features: 4}", None, "num_features=4"),
    ("steps: [{op: jump}]", "steps[0]", "op"),
    ("steps: [{op: forward, mode: training}]", "steps[0].mode", "train"),
    ("steps: [{op: backward}]", None, "backward before any forward"),
    ("input: {shape: [2, 3, -4]}", "input.shape", ">= 0"),
    ("input: {shape: [2, 3, 4], dtype: float8}", "input.dtype", "float64"),
])
def test_bad_field_is_named(tmp_path, mutation, field, words):
    key = mutation.split(":")[0]
    lines = [ln for ln in GOOD_CASE.splitlines() if not ln.strip().startswith(key + ":")]
    body = "theme: t\ncases:" + "\n".join(lines) + f"\n    {mutation}\n"
    err = error_of(tmp_path, body)
    assert err.file == "bad.yaml" and err.case_id == "ok"
    if field:
        assert err.field == field, str(err)
    assert words in str(err)
    assert str(err).startswith("bad.yaml: case 'ok'")


def test_yaml_syntax_error_names_line(tmp_path):
    err = error_of(tmp_path, "theme: t\ncases:\n  - id: [unclosed\n")
    assert "YAML syntax error at line" in str(err) and err.file == "bad.yaml"


def test_duplicate_ids_within_and_across_files(tmp_path):
    err = error_of(tmp_path, "theme: t\ncases:" + GOOD_CASE + GOOD_CASE)
    assert err.case_id == "ok" and err.field == "id" and "duplicate" in str(err)
    write(tmp_path, "theme: t\ncases:" + GOOD_CASE, "a.yaml")
    write(tmp_path, "theme: u\ncases:" + GOOD_CASE, "b.yaml")
    cat = load_catalogue([tmp_path / "a.yaml", tmp_path / "b.yaml"], tmp_path)
    assert [c.id for c in cat.cases] == ["ok"]
    assert len(cat.errors) == 1 and "b.yaml" in str(cat.errors[0]) and "first in a.yaml" in str(cat.errors[0])


def test_bad_file_does_not_hide_good_ones(tmp_path):
    write(tmp_path, "theme: t\ncases:" + GOOD_CASE, "good.yaml")
    write(tmp_path, "theme: t\ncases: [{id: x}]", "bad.yaml")
    cat = load_catalogue([tmp_path], tmp_path)
    assert [c.id for c in cat.cases] == ["ok"]
    assert len(cat.errors) == 1 and str(cat.errors[0]).startswith("bad.yaml: case 'x'")


def test_arrays_are_seeded_and_cast(tmp_path):
    body = "theme: t\ncases:" + GOOD_CASE.replace("input: {shape: [2, 3, 4]}", "input: {shape: [2, 3, 4], dtype: float16, seed: 7}")
    (case,) = load_file(write(tmp_path, body), tmp_path)
    a, b = generate(case), generate(case)
    assert a.batches[0].dtype.name == "float16" and a.init["weight"].dtype.name == "float32"
    assert (a.batches[0] == b.batches[0]).all()


def test_bfloat16_rounding_keeps_8_significant_bits():
    import numpy as np

    v = round_bfloat16(np.array([1.0 + 2**-8, 1.0 + 3 * 2**-9, np.nan, 3.0]))
    assert v[0] == 1.0  # tie to even
    assert v[1] == 1.0 + 2**-7
    assert np.isnan(v[2]) and v[3] == 3.0


@pytest.mark.parametrize("name", ["iris", "wine", "breast_cancer", "digits"])
def test_dataset_files_read_directly_equal_sklearns_loader(name):
    import sklearn.datasets

    from bnconform.arrays import dataset

    expected = getattr(sklearn.datasets, f"load_{name}")().data
    got = dataset(name)
    assert got.dtype == np.float64 and got.shape == expected.shape
    assert np.array_equal(got, expected)


def test_dataset_inputs_are_real_rows_and_shapes_are_checked(tmp_path):
    import numpy as np
    from sklearn.datasets import load_iris

    body = "theme: t\ncases:" + GOOD_CASE.replace(
        "layer: {num_features: 3}", "layer: {num_features: 4}").replace(
        "input: {shape: [2, 3, 4]}", "input: {shape: [30, 4], distribution: {kind: dataset, dataset: iris}}")
    (case,) = load_file(write(tmp_path, body), tmp_path)
    batch = generate(case).batches[0].astype(np.float64)
    iris = load_iris().data
    # Every row of the batch is a row of iris (float32-rounded).
    assert all(np.any(np.all(np.isclose(iris, row, atol=1e-6), axis=1)) for row in batch)
    bad = body.replace("[30, 4]", "[30, 4, 1]").replace("num_features: 4", "num_features: 4")
    err = error_of(tmp_path, bad)
    assert "dataset iris" in str(err) and err.case_id == "ok"


def test_decay_is_one_minus_momentum_and_defined_for_the_cumulative_average():
    """``Layer.decay`` is what decay-convention frameworks (Keras, Flax, Paddle, MXNet, ONNX) are given. With
    ``momentum: null`` an eval-only program still reaches them (``uses_cumulative_average`` is false): the
    Keras adapters computed ``1.0 - None`` there (TypeError, found by bnconform explore on keras.torch)."""
    from bnconform.catalogue import Layer

    assert Layer(num_features=1, momentum=0.25).decay == 0.75
    assert Layer(num_features=1, momentum=0.0).decay == 1.0
    assert Layer(num_features=1, momentum=None).decay == 0.9
