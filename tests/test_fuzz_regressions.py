"""Past defects found by fuzzing model files (``scripts/fuzz_models.py``), kept as regression tests.

The variants are derived from the MLPerf Tiny reference models, which may not be copied into this
repository: ``tests/data/fuzz_crashers.json`` keeps each as a recipe (the reference model's name
and sha256, and the bytes changed), rebuilt here. Skipped when ``../shared`` is absent.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from conftest import BACKENDS, DATA, MLPERF

import edge_runtime as er

CORPUS: list[dict[str, Any]] = json.loads((DATA / "fuzz_crashers.json").read_text())["crashers"]


def rebuild(entry: dict[str, Any], tmp_path: Path) -> Path:
    seed = MLPERF / entry["seed"]
    if not seed.is_file():
        pytest.skip(f"{seed} absent (the MLPerf Tiny reference models are in ../shared)")
    content = bytearray(seed.read_bytes())
    assert hashlib.sha256(content).hexdigest() == entry["seed_sha256"], f"{seed} is not the file the recipe patches"
    for offset, old, new in entry["patches"]:
        assert content[offset] == old
        content[offset] = new
    path = tmp_path / f"variant_{entry['seed']}"
    path.write_bytes(bytes(content))
    return path


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("index", range(len(CORPUS)))
def test_past_crasher_is_a_clean_error_or_loads(index: int, backend: str, tmp_path: Path) -> None:
    entry = CORPUS[index]
    path = rebuild(entry, tmp_path)
    device = "litert:cpu" if backend == "litert" else "openvino:CPU"
    try:
        with er.load_model(path, device, isolate=True) as model:  # a native crash stays in the child
            model.infer_raw([er.tensors.random_tensor(s, 0) for s in model.inputs])
    except er.EdgeRuntimeError as exc:
        expected = getattr(er, entry["now"]) if entry.get("now") else er.EdgeRuntimeError
        assert isinstance(exc, expected), f"{entry['found']}: now {type(exc).__name__}: {exc}"
        assert str(path) in str(exc)
    else:
        assert not entry.get("now"), f"{entry['found']}: expected {entry['now']}, but it loaded and ran"
