"""Upgrade-gate demonstrations on REAL framework versions, from the shards the
tox envs wrote (run by `tox -e gate` after the framework envs).

Outside that env the shards may be missing: the tests skip with the reason,
unless BNCONFORM_REQUIRE_SHARDS=1 (set by `tox -e gate`), where a missing
shard is a failure — a gating run never passes vacuously.
"""

import os
from pathlib import Path

import pytest

from bnconform.gate import evaluate
from bnconform.resultset import load_and_merge

RESULTS = Path(__file__).resolve().parents[1] / "reports" / "results"


def shard(env: str) -> Path:
    path = RESULTS / f"{env}.jsonl"
    if not path.exists():
        if os.environ.get("BNCONFORM_REQUIRE_SHARDS") == "1":
            pytest.fail(f"shard {path} is missing: run `tox -e {env}` first")
        pytest.skip(f"shard {path} not present (run `tox -e {env}`)")
    return path


def test_torch_2_13_to_2_14_has_no_batchnorm_behaviour_change():
    old, new = load_and_merge([shard("torch")]), load_and_merge([shard("torch214")])
    assert {r.framework_version for r in old.records} == {"2.13.0+cpu"}
    assert {r.framework_version.split("+")[0] for r in new.records} == {"2.14.1"}
    result = evaluate(new, old, ["torch"])
    assert result.passed, result.text()
    assert result.diff.changed == [] and len(new.cells) == len(old.cells) > 100
