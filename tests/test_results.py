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


def test_truncated_or_corrupt_gzipped_shard_keeps_what_was_read(tmp_path):
    # A sweep shard (*.jsonl.gz) cut short, e.g. by a full disk or an interrupted copy: reading it raised
    # EOFError out of read_shards (the gate and the report crashed with a traceback).
    import gzip

    lines = good_lines(400)
    whole = gzip.compress(("\n".join(lines) + "\n").encode())
    (tmp_path / "cut.jsonl.gz").write_bytes(whole[: len(whole) // 2])
    records, bad = read_results([tmp_path / "cut.jsonl.gz"])
    assert 0 < len(records) < 400 and [r.case_id for r in records] == [f"c{i}" for i in range(len(records))]
    assert len(bad) >= 1 and "truncated or corrupt" in bad[-1].message and "EOFError" in bad[-1].message
    (tmp_path / "junk.jsonl.gz").write_bytes(b"not gzip at all")
    records, bad = read_results([tmp_path / "junk.jsonl.gz"])
    assert records == [] and "BadGzipFile" in bad[0].message and bad[0].line == 1


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


def test_shard_manifest_tells_complete_from_killed_and_flags_misplaced_lines(tmp_path):
    from bnconform.results import Collected, RunEnd, RunStart, read_shards

    rec = json.loads(good_lines(1)[0]) | {"nodeid": "cases/x.yaml::c0[a]"}
    start = RunStart(env="e", started="t", catalogue_digest="sha256:0").model_dump_json()
    coll = Collected(cells=["cases/x.yaml::c0[a]", "cases/x.yaml::c1[a]"], full=2, partial=False).model_dump_json()
    end = RunEnd(how="complete", exitstatus=0, ended="t", records=1).model_dump_json()
    (tmp_path / "killed.jsonl").write_text("\n".join([start, coll, json.dumps(rec)]) + "\n")
    (tmp_path / "done.jsonl").write_text("\n".join([start, coll, json.dumps(rec), end]) + "\n")
    (tmp_path / "legacy.jsonl").write_text(json.dumps(rec) + "\n")
    (tmp_path / "twice.jsonl").write_text("\n".join([start, coll, end, start, json.dumps(rec)]) + "\n")
    shards = {s.file.rsplit("/", 1)[1]: s for s in read_shards([tmp_path])}
    assert shards["killed.jsonl"].status().startswith("the run never finished")
    assert shards["done.jsonl"].status() == "1 collected cell(s) have no record"
    assert shards["done.jsonl"].missing_records() == ["cases/x.yaml::c1[a]"]
    assert shards["legacy.jsonl"].legacy and "no run manifest" in shards["legacy.jsonl"].status()
    assert any("not the first line" in p for p in shards["twice.jsonl"].structure)
    assert any("record after run_end" in p for p in shards["twice.jsonl"].structure)


def test_catalogue_digest_covers_expectations_and_not_the_location(tmp_path):
    from bnconform.results import catalogue_digest, catalogue_dirs

    a, b = tmp_path / "a", tmp_path / "b"
    for root in (a, b):
        (root / "cases").mkdir(parents=True)
        (root / "cases" / "t.yaml").write_text("theme: t\n")
    assert catalogue_digest(catalogue_dirs(a / "cases")) == catalogue_digest(catalogue_dirs(b / "cases"))
    (b / "expectations").mkdir()
    (b / "expectations" / "torch.yaml").write_text("x: 1\n")
    assert catalogue_dirs(b / "cases")[1].name == "expectations"
    assert catalogue_digest(catalogue_dirs(a / "cases")) != catalogue_digest(catalogue_dirs(b / "cases"))
    (a / "cases" / "t.yaml").write_text("theme: u\n")
    assert catalogue_digest([a / "cases"]) != catalogue_digest([b / "cases"])
