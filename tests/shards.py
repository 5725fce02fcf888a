"""Write shards the way the pytest plugin does (run manifest around the records),
for gate tests that build records in-process."""

from __future__ import annotations

from pathlib import Path

from bnconform.results import (Collected, ResultRecord, ResultsWriter, RunEnd, RunStart, catalogue_digest,
                               catalogue_dirs, now)

ROOT = Path(__file__).resolve().parents[1]


def write_shard(path: Path, records: list[ResultRecord], *, how: str | None = "complete",
                cases: Path = ROOT / "cases") -> Path:
    """``path`` with run_start, collected (exactly these cells), the records, and
    run_end ``how`` (None: no run_end line, as a killed run leaves it)."""
    records = [r if r.nodeid else r.model_copy(update={"nodeid": f"{r.case_file}::{r.case_id}[{r.adapter}]"})
               for r in records]
    w = ResultsWriter(path)
    w.write(RunStart(env="test", started=now(), catalogue_digest=catalogue_digest(catalogue_dirs(cases)),
                     catalogue_dirs=["cases"]))
    w.write(Collected(cells=[r.nodeid for r in records], full=len(records), partial=False))
    for r in records:
        w.write(r)
    if how is not None:
        w.write(RunEnd(how=how, exitstatus=0, ended=now(), records=len(records)))
    w.close()
    return path
