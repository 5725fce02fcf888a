"""Project wiring: the README commands, .ci/run, tox envs and the adapter registry agree."""

import configparser
import importlib
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```(?:sh|bash|shell)\n(.*?)```", text, re.S).group(1)
    return [ln.strip() for ln in block.splitlines() if ln.strip() and not ln.strip().startswith("#")]


def tox() -> configparser.ConfigParser:
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(ROOT / "tox.ini")
    return cfg


def test_readme_starts_with_main_job_then_tests():
    main, tests = readme_commands()[:2]
    assert main.endswith("tox -m main") and tests.endswith("tox -m ci")


def test_ci_runs_exactly_the_readme_test_command():
    script = (ROOT / ".ci" / "run").read_text()
    assert readme_commands()[1] in script.splitlines()


def test_tox_labels_name_existing_envs():
    cfg = tox()
    labels = {}
    for line in cfg["tox"]["labels"].strip().splitlines():
        name, _, envs = line.partition("=")
        labels[name.strip()] = [e.strip() for e in envs.split(",")]
    assert {"main", "ci"} <= set(labels)
    envs = {s.split(":", 1)[1] for s in cfg.sections() if s.startswith("testenv:")}
    for label, names in labels.items():
        assert set(names) <= envs, (label, set(names) - envs)
    assert labels["main"][-1] == "report" and "selftest" in labels["ci"]


def test_every_conformance_env_gates_its_framework():
    cfg = tox()
    for section in cfg.sections():
        cmd = cfg[section].get("commands", "")
        if "pytest cases" in cmd:
            assert "--framework" in cmd, f"{section} runs the matrix without requiring its framework"


def test_builtin_adapters_resolve_and_cite_sources():
    from adapters import BUILTIN
    from bnconform.adapter import Adapter

    for name, (target, framework) in BUILTIN.items():
        module, _, cls_name = target.partition(":")
        cls = getattr(importlib.import_module(module), cls_name)  # framework imports are lazy
        assert issubclass(cls, Adapter) and cls.name == name and cls.framework == framework.split(".")[0]
        assert cls.__doc__ or importlib.import_module(module).__doc__
        assert not hasattr(cls, "divergences"), f"{name}: divergences live in expectations/*.yaml"


def test_adapters_only_translate():
    """No adapter module judges: no Divergence, no oracle, array generator or
    comparison (their expectations are data in expectations/*.yaml)."""
    import ast

    forbidden = {"bnconform.oracle", "bnconform.arrays", "bnconform.compare", "bnconform.expect"}
    for path in sorted((ROOT / "adapters").glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = {node.module} | {f"{node.module}.{a.name}" for a in node.names}
                assert not names & forbidden, f"{path.name} imports {sorted(names & forbidden)}"
                assert "Divergence" not in {a.name for a in node.names}, f"{path.name} imports Divergence"
            elif isinstance(node, ast.Import):
                assert not {a.name for a in node.names} & forbidden, f"{path.name} imports the judging code"
            elif isinstance(node, ast.Name):
                assert node.id != "Divergence", f"{path.name} defines a Divergence"


def test_tf_keras_rows_reach_keras2_through_one_function():
    """Every tf_keras row gets its Keras 2 module from ``keras2()`` (``tf_keras``, or TF 2.12/2.13's bundled
    ``tf.keras``): a row importing ``tf_keras`` itself errors on every cell of the TF 2.12/2.13 sweep (the
    MirroredStrategy row did: 9 ``error`` cells per release)."""
    import ast

    tree = ast.parse((ROOT / "adapters" / "tf_keras.py").read_text())
    keras2 = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "keras2")
    inside = {id(n) for n in ast.walk(keras2)}
    direct = [n.lineno for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) and id(n) not in inside
              and (any(a.name.split(".")[0] == "tf_keras" for a in n.names)
                   or (getattr(n, "module", None) or "").startswith("tf_keras"))]
    assert not direct, f"adapters/tf_keras.py imports tf_keras outside keras2() at lines {direct}"


def test_github_workflow_is_valid_and_names_real_tox_envs():
    import yaml

    wf = yaml.safe_load((ROOT / ".github" / "workflows" / "bnconform.yml").read_text())
    envs = {s.split(":", 1)[1] for s in tox().sections() if s.startswith("testenv:")}
    matrix = [env for job in ("shard", "gpu-shard") for env in wf["jobs"][job]["strategy"]["matrix"]["env"]]
    assert set(matrix) <= envs, set(matrix) - envs
    assert set(wf["jobs"]["report-and-gate"]["needs"]) == {"shard", "gpu-shard"}
    conformance = {s.split(":", 1)[1] for s in tox().sections()
                   if s.startswith("testenv:") and "pytest cases" in tox()[s].get("commands", "")}
    assert conformance <= set(matrix), f"conformance envs missing from the CI matrix: {conformance - set(matrix)}"
    steps = " ".join(str(s.get("run", "")) for s in wf["jobs"]["report-and-gate"]["steps"])
    assert "bnconform report" in steps and "bnconform gate" in steps


def test_cpu_envs_hide_gpus_and_only_the_cuda_env_sees_them():
    cfg = tox()
    assert re.search(r"^\s*CUDA_VISIBLE_DEVICES\s*=\s*$", cfg["testenv"]["set_env"], re.M)
    for section in cfg.sections():
        own = cfg[section].get("set_env")
        if section.startswith("testenv:") and own is not None:
            inherits = "{[testenv]set_env}" in own
            assert inherits != (section == "testenv:torch-cuda"), section


def test_every_registered_group_runs_in_a_gating_env_and_is_documented():
    """Adding a framework = its adapter module, its expectations file (tests/test_expectations.py) and one
    BUILTIN registration; this test says what else must follow from that registration: a tox env that runs
    the group with --framework (in the main and ci labels unless it needs a GPU), the CI workflow matrix
    (test_github_workflow_is_valid_and_names_real_tox_envs) and the README's environments table."""
    from adapters import BUILTIN

    cfg = tox()
    labels = {name.strip(): {e.strip() for e in envs.split(",")}
              for name, _, envs in (ln.partition("=") for ln in cfg["tox"]["labels"].strip().splitlines())}
    runs: dict[str, set[str]] = {}
    for section in cfg.sections():
        cmd = cfg[section].get("commands", "")
        for group in re.findall(r"--framework (\S+)", cmd):
            runs.setdefault(group, set()).add(section.split(":", 1)[1])
    readme = (ROOT / "README.md").read_text()
    table = [ln for ln in readme.splitlines() if ln.startswith("| `")]
    for name, (_, group) in BUILTIN.items():
        envs = runs.get(group)
        assert envs, f"{name}: no tox env runs --framework {group}"
        if group != "torch.cuda":  # GPU machines only; its shard is committed
            assert envs & labels["main"] and envs & labels["ci"], f"{group}: env {envs} not in the main/ci labels"
        for env in envs:
            assert any(ln.startswith(f"| `{env}`") or f"`{env}`" in ln.split("|")[1] for ln in table), \
                f"README's environments table has no row for env {env} ({name})"
        short = name.split("[")[0].rsplit(".", 1)[-1].split("(")[0]
        assert short in readme, f"README does not mention row {name}"
