"""The catalogue's power: injected BatchNorm bugs must be caught.

These test bnconform, not any framework: a plain NumPy BatchNorm (the control)
must conform on every case, and each mutant with one classic bug must get at
least one ``fails`` cell on the real catalogue.
"""

from pathlib import Path

import pytest

from bnconform.catalogue import load_catalogue
from bnconform.engine import run_cell

from .numpy_bn import MUTANTS, NumpyBatchNorm

ROOT = Path(__file__).resolve().parents[1]
CATALOGUE = load_catalogue([ROOT / "cases"], ROOT)


def test_catalogue_loads_cleanly():
    assert CATALOGUE.errors == []
    assert len(CATALOGUE.cases) >= 15


def test_control_conforms_everywhere():
    records = [run_cell(case, NumpyBatchNorm(), "0") for case in CATALOGUE.cases]
    bad = [(r.case_id, r.verdict, r.reason) for r in records if r.verdict != "conforms"]
    assert bad == []


@pytest.mark.parametrize("mutant", MUTANTS, ids=lambda m: m.name)
def test_mutant_is_caught(mutant):
    # The semantic mutants on the small cases (the large ones only repeat them at 2^16+ values per
    # channel, seconds each); the precision mutant at scale: tests/test_realistic.py.
    records = [run_cell(case, mutant(), "0") for case in CATALOGUE.cases if not case.large]
    caught = [r.case_id for r in records if r.verdict == "fails"]
    assert caught, f"{mutant.name} passes the whole catalogue"
    # No mutant may crash the engine: only fails/conforms are possible here.
    assert {r.verdict for r in records} <= {"fails", "conforms"}
