"""The installable suite without installing it (issue 22): the pytest11 entry point and the checkout's
conftest register the plugin once, ``bnconform run`` (pass-through, ``--cases``, refusal of a bad user file),
the built-in catalogue from any directory, the wheel mapping in ``pyproject.toml`` and plain-text ``--help``.

The wheel itself, installed into a fresh venv, is tested by ``tests/test_install.py`` (tox env ``install``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from bnconform import cli
from bnconform.builtin import location
from bnconform.catalogue import load_catalogue

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
GOOD = "tests.numpy_bn:NumpyBatchNorm"


def bnconform(*args, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m bnconform.cli ARGS`` in ``cwd`` (the checkout importable, as an installed package is)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    env.pop("BNCONFORM_ENV", None)
    return subprocess.run([sys.executable, "-m", "bnconform.cli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def shard_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def own_case_dir(tmp_path: Path) -> Path:
    """``mine/own.yaml``: one valid case of the user's (a built-in case under a new id)."""
    case = yaml.safe_load((ROOT / "cases" / "training.yaml").read_text())["cases"][0]
    case["id"] = "my-own-" + case["id"]
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "own.yaml").write_text(yaml.safe_dump({"theme": "own", "cases": [case]}, sort_keys=False))
    return tmp_path / "mine"


# ------------------------------------------------------------------ packaging metadata


def test_the_pytest11_entry_point_is_named_after_the_plugin_module():
    # pytest registers an entry-point plugin under the entry point's NAME; the checkout's conftest.py
    # (pytest_plugins = ["bnconform.plugin"]) skips a plugin registered under the module's name only.
    assert PYPROJECT["project"]["entry-points"]["pytest11"] == {"bnconform.plugin": "bnconform.plugin"}
    assert "bnconform.plugin" in (ROOT / "conftest.py").read_text()


def test_the_wheel_maps_the_top_level_catalogue_into_the_package():
    include = PYPROJECT["tool"]["hatch"]["build"]["targets"]["wheel"]["force-include"]
    assert include == {"cases": "bnconform/_builtin/cases", "adapters": "bnconform/_builtin/adapters",
                       "expectations": "bnconform/_builtin/expectations"}
    assert PYPROJECT["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"] == ["bnconform"]


def test_the_checkout_is_its_own_builtin_catalogue():
    where = location()
    assert not where.installed and where.root == ROOT and where.adapters_package == "adapters"
    assert where.check().cases == ROOT / "cases" and where.expectations == ROOT / "expectations"


def test_entry_point_and_conftest_register_the_plugin_once(pytester, monkeypatch):
    # A distribution on the path with the pyproject's pytest11 entry point (as an installed bnconform has),
    # plus the checkout's conftest.py line: pytest must load the plugin once, not fail on a second registration.
    monkeypatch.setenv("PYTHONPATH", f"{pytester.path}{os.pathsep}{ROOT}")
    dist = pytester.path / "bnconform_probe-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: bnconform-probe\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[pytest11]\n" + "".join(f"{k} = {v}\n" for k, v in PYPROJECT["project"]["entry-points"]["pytest11"].items()))
    pytester.makeconftest((ROOT / "conftest.py").read_text())
    result = pytester.runpytest_subprocess("-p", "bnconform.plugin", "--help")
    assert result.ret == 0, result.stderr.str()
    result.stdout.fnmatch_lines(["*--framework=NAME*"])


# ------------------------------------------------------------------ the built-in catalogue from anywhere


def test_bnconform_cases_and_validate_read_the_builtin_catalogue_from_any_directory(tmp_path):
    ids = [c.id for c in load_catalogue([ROOT / "cases"], ROOT).cases]
    listed = bnconform("cases", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert len(lines) == len(ids) and all(f" {i} " in line for i, line in zip(ids, lines))
    checked = bnconform("validate", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"{len(ids)} valid case(s), 0 error(s)" in checked.stdout


def test_pytest_given_no_paths_outside_a_checkout_collects_the_builtin_catalogue(pytester, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.setenv("BNCONFORM_ENV", "anywhere")
    # --noconftest: the checkout's conftest.py (pytest_plugins) would load as a non-top-level conftest here.
    result = pytester.runpytest_subprocess("-p", "bnconform.plugin", "--noconftest", "--adapter", GOOD, "-k",
                                           "train-1step-m0.1", "--results-dir", "res", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    recs = [d for d in shard_lines(pytester.path / "res" / "anywhere.jsonl") if "kind" not in d]
    assert [(r["case_id"], r["case_file"], r["verdict"]) for r in recs] == [
        ("train-1step-m0.1", "cases/training.yaml", "conforms")]


def test_a_checkout_refuses_a_pathless_run_elsewhere_with_a_clear_message(pytester, monkeypatch):
    # Collected from another rootdir, the checkout's cases/ would make pytest import its conftest.py late
    # (pytest_plugins in a non-top-level conftest: an internal error); the message says what works instead.
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    result = pytester.runpytest_subprocess("-p", "bnconform.plugin", "--adapter", GOOD, "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*this bnconform is the checkout {ROOT}*bnconform run*"])


# ------------------------------------------------------------------ bnconform run


def test_run_passes_unknown_arguments_to_pytest_and_returns_its_status(tmp_path, monkeypatch):
    seen = {}

    class FakePytest:
        def __init__(self, cmd, env):
            seen["cmd"], seen["env"] = cmd, env

        def wait(self):
            return 5

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli.subprocess, "Popen", FakePytest)
    code = cli.main(["run", "--framework", "torch", "-n", "2", "-k", "train and not eval", "--adapter", "m:C",
                     "--name", "mine", "--no-report"])
    assert code == 5
    cmd = seen["cmd"]
    assert cmd[:3] == [sys.executable, "-m", "pytest"] and str(location().cases) in cmd
    assert cmd[-6:] == ["-n", "2", "-k", "train and not eval", "--adapter", "m:C"]
    assert cmd[cmd.index("--framework") + 1] == "torch"
    assert cmd[cmd.index("--results-dir") + 1] == str(tmp_path / "reports" / "results")
    assert cmd[cmd.index("--rootdir") + 1] == str(tmp_path)
    assert seen["env"]["BNCONFORM_ENV"] == "mine"


def test_other_commands_still_refuse_unknown_arguments(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["cases", "--frobnicate"])
    assert exc.value.code == 2 and "unrecognized arguments: --frobnicate" in capsys.readouterr().err


def test_run_adds_user_cases_writes_shard_and_report_here_and_gate_checks_them(tmp_path):
    own_case_dir(tmp_path)
    proc = bnconform("run", "--adapter", GOOD, "--cases", "mine", "-k", "train-1step-m0.1", "--name", "own",
                     "-p", "no:cacheprovider", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    shard = tmp_path / "reports" / "results" / "own.jsonl"
    recs = [d for d in shard_lines(shard) if "kind" not in d]
    assert sorted((r["case_id"], r["case_file"], r["env"]) for r in recs) == [
        ("my-own-train-1step-m0.1", "mine/own.yaml", "own"), ("train-1step-m0.1", "cases/training.yaml", "own")]
    assert (tmp_path / "reports" / "parity.html").is_file()
    collected = next(d for d in shard_lines(shard) if d.get("kind") == "collected")
    assert collected["full"] == len(load_catalogue([ROOT / "cases"], ROOT).cases) + 1
    # The gate checks the run against the built-in catalogue plus the same --cases directory.
    assert bnconform("gate", shard, "--allow-partial", "--cases", "mine", cwd=tmp_path).returncode == 0
    without = bnconform("gate", shard, "--allow-partial", cwd=tmp_path)
    assert without.returncode == 1 and "run on another catalogue than the one on disk" in without.stdout


def test_run_refuses_a_bad_user_case_file_before_touching_the_previous_shard(tmp_path):
    mine = own_case_dir(tmp_path)
    data = yaml.safe_load((mine / "own.yaml").read_text())
    data["cases"][0]["layer"]["momentum"] = 2.5
    (mine / "own.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    previous = tmp_path / "reports" / "results" / "local.jsonl"
    previous.parent.mkdir(parents=True)
    previous.write_text('{"kind": "run_start"}\n')
    proc = bnconform("run", "--adapter", GOOD, "--cases", "mine", cwd=tmp_path)
    assert proc.returncode == 2
    assert "mine/own.yaml: case 'my-own-train-1step-m0.1': field 'layer.momentum': " in proc.stderr, proc.stderr
    assert "nothing was run" in proc.stderr
    assert previous.read_text() == '{"kind": "run_start"}\n'


# ------------------------------------------------------------------ --help


@pytest.mark.parametrize("command", [[], ["run"], ["report"], ["validate"], ["cases"], ["gate"]])
def test_help_is_plain_text(command, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main([*command, "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "usage: bnconform" in text
    for markup in ("`", ":mod:", ":func:", ":class:", ":meth:", "::"):
        assert markup not in text, (command, markup)
