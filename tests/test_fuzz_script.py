"""``scripts/fuzz_models.py`` in a short setting: real mutated models, real loads in worker processes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

SCRIPT = ROOT / "scripts" / "fuzz_models.py"


def fuzz(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )


def test_a_short_run_counts_every_load_and_is_reproducible(tmp_path: Path) -> None:
    args = ["--count", "30", "--device", "litert:cpu", "--json", "--keep", str(tmp_path / "kept")]
    first, second = fuzz(tmp_path, *args), fuzz(tmp_path, *args)
    assert first.returncode in (0, 1), first.stderr[-2000:]
    doc, again = json.loads(first.stdout), json.loads(second.stdout)
    outcomes = doc["outcomes"]["litert:cpu"]
    assert doc["variants"] == 30 and sum(outcomes.values()) == 30
    assert outcomes["refused"] > 0, "no mutation was ever noticed: the checks check nothing"
    # a huge declared dimension is always refused by the tensor budget, never loaded
    assert doc["by_mutation"]["dimension"]["loaded"] == 0
    assert doc["by_mutation"] == again["by_mutation"], "the same seed makes the same files"
    for k in doc["kept"]:  # anything that crashed or hung is kept for a regression test
        assert Path(k["file"]).is_file() and k["outcome"] in ("crash", "hang")


def test_a_bad_count_is_a_usage_error(tmp_path: Path) -> None:
    out = fuzz(tmp_path, "--count", "0")
    assert out.returncode == 2 and "--count must be >= 1" in out.stderr


def test_isolated_fuzzing_counts_a_crash_in_the_model_process_as_contained(tmp_path: Path) -> None:
    import os

    env = {**os.environ, "EDGE_RUNTIME_CHILD_FAULT": "segv@open"}  # every model's own process dies
    args = ["--count", "3", "--device", "litert:cpu", "--isolate", "--json"]
    r = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300, env=env)
    doc = json.loads(r.stdout)
    outcomes = doc["outcomes"]["litert:cpu"]
    assert doc["isolate"] is True
    # files that pass our checks reach the (dying) child: contained, never a crash of the worker;
    # those our checks refuse never start a child
    assert outcomes["crash"] == 0 and outcomes["contained"] + outcomes["refused"] == 3, outcomes
    assert outcomes["loaded"] == 0 and outcomes["contained"] >= 1, outcomes


def test_decoder_harness_runs_under_atheris(tmp_path: Path) -> None:
    import pytest

    pytest.importorskip("atheris", reason="atheris (pip install atheris) runs the decoder harness")
    script = ROOT / "scripts" / "fuzz_decoder.py"
    corpus = tmp_path / "corpus"
    r = subprocess.run(
        [sys.executable, str(script), "-runs=300", str(corpus)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "DONE" in r.stderr and "cov:" in r.stderr
    assert len(list(corpus.iterdir())) > 10  # the seeds were written, and new inputs kept
