"""Result records: corrupt, truncated or old-schema lines are reported by file and line, never fatal."""

import json

import pytest

from bnconform.engine import run_cell
from bnconform.results import ResultsWriter, read_results

from .numpy_bn import NumpyBatchNorm
from .test_engine import case


def good_lines(n=3) -> list[str]:
    c = case()
    return [run_cell(c, NumpyBatchNorm(), "1").model_copy(update={"case_id": f"c{i}"}).model_dump_json()
            for i in range(n)]


def test_bad_lines_are_reported_and_the_rest_is_kept(tmp_path):
    lines = good_lines()
    old = json.loads(lines[0]) | {"schema_version": 0}
    invalid = json.loads(lines[1]) | {"verdict": "passes"}
    f = tmp_path / "shard.jsonl"
    f.write_text("\n".join([lines[0], json.dumps(old), "", json.dumps(invalid), "[1, 2]", lines[2], lines[1][:50]]))
    records, bad = read_results([tmp_path])
    assert [r.case_id for r in records] == ["c0", "c2"]
    assert [(b.line, b.message.split(" ")[0]) for b in bad] == [(2, "schema_version"), (4, "field"), (5, "not"), (7, "not")]
    assert all(str(f) in str(b) for b in bad)
    assert "truncated write?" in str(bad[-1]) and "verdict" in str(bad[1])


def test_missing_path_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_results([tmp_path / "nope"])


def test_writer_flushes_each_record_as_one_line(tmp_path):
    w = ResultsWriter(tmp_path / "r.jsonl")
    for line in good_lines(2):
        w.write(json.loads(line))
        # Visible on disk before close: a crash later loses nothing already written.
        assert (tmp_path / "r.jsonl").read_text().count("\n") >= 1
    w.close()
    assert len(read_results([tmp_path / "r.jsonl"])[0]) == 2
