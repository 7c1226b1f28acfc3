"""OpenVINO backend: trimmed import, our compiled-model cache (``cache_dir``) and ``batch``.

Real OpenVINO throughout; cache directories under ``tmp_path``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import MLPERF_MODELS, MODELS, ROOT, backend_available, random_input

pytestmark = pytest.mark.skipif(not backend_available("openvino"), reason="openvino not installed")

SHIPPED = [MODELS / "digits_cnn_int8.tflite", MODELS / "basicmotions_int8.tflite"]


def _cpu() -> Any:
    from edge_runtime.backends import openvino as ob

    return next(d for d in ob.probe_devices(names=["CPU"]) if d.name == "CPU")


def _open(path: Path, **options: Any) -> Any:
    from edge_runtime.backends import openvino as ob
    from edge_runtime.model_file import read_model_file

    return ob.open_session(read_model_file(path), _cpu(), num_threads=1, **options)


def _entries(cache: Path) -> list[Path]:
    return sorted((cache / "edge_runtime-ov").glob("*.blob"))


def _same_outputs(a: Any, b: Any, seeds: range = range(3)) -> None:
    for seed in seeds:
        xs = [random_input(s, seed) for s in a.inputs]
        for ya, yb in zip(a.run(xs), b.run(xs)):
            assert ya.dtype == yb.dtype and np.array_equal(ya, yb)


# --- 1. the trimmed import ------------------------------------------------------------------

IMPORT_CHECK = """
import sys
import edge_runtime as er
m = er.load(sys.argv[1], "openvino:CPU")
m.close()
assert "openvino" in sys.modules
assert "openvino.tools.ovc" not in sys.modules, "the converter was imported by edge_runtime"
assert "openvino_telemetry" not in sys.modules
import openvino
assert openvino.tools.__name__ == "openvino.tools"  # bound as after a plain import
assert callable(openvino.convert_model)
from openvino import convert_model
assert convert_model is openvino.convert_model
import openvino.tools.ovc
assert openvino.tools.ovc.convert_model is convert_model
from openvino_telemetry.utils.opt_in_checker import OptInChecker
print("telemetry-off" if OptInChecker._run_in_ci() else "telemetry-default")
"""


def test_import_skips_converter_but_convert_model_still_works() -> None:
    env_run = subprocess.run(
        [sys.executable, "-c", IMPORT_CHECK, str(SHIPPED[0])],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        env={**_clean_env(), "EDGE_RUNTIME_OPENVINO_TELEMETRY": ""},
    )
    assert env_run.returncode == 0, env_run.stderr
    # The converter imported later, through the lazy attribute, still has telemetry turned off.
    assert env_run.stdout.strip().splitlines()[-1] == "telemetry-off"


def test_direct_import_of_converter_works_after_trimmed_import() -> None:
    code = (
        "import sys\n"
        "from edge_runtime.backends import openvino as ob\n"
        "ov = ob._ov()\n"
        "import openvino.tools.ovc as ovc\n"
        "assert callable(ovc.convert_model)\n"
        "assert 'openvino.tools.ovc' in sys.modules and sys.modules['openvino.tools.ovc'] is ovc\n"
        "assert callable(ov.convert_model)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr


def _clean_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("EDGE_RUNTIME_OPENVINO")}


# --- 2. the compiled-model cache -------------------------------------------------------------


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_cache_miss_then_hit_is_bit_identical_to_cold(path: Path, tmp_path: Path) -> None:
    cold = _open(path)
    miss = _open(path, cache_dir=str(tmp_path))
    assert (cold.compile_cache, miss.compile_cache) == ("off", "miss")
    assert len(_entries(tmp_path)) == 1
    # No second blob from OpenVINO's own CACHE_DIR beside ours.
    assert [p.name for p in tmp_path.iterdir()] == ["edge_runtime-ov"]
    hit = _open(path, cache_dir=str(tmp_path))
    assert hit.compile_cache == "hit"
    for s in (miss, hit):
        assert s.inputs == cold.inputs and s.outputs == cold.outputs
        assert s.op_count == cold.op_count
        assert s.execution_devices == cold.execution_devices
        _same_outputs(cold, s)
    for s in (cold, miss, hit):
        s.close()


def test_hit_does_not_read_the_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edge_runtime.backends import openvino as ob

    _open(SHIPPED[0], cache_dir=str(tmp_path)).close()

    def no_read(source: Any) -> Any:
        raise AssertionError("read_model on a warm start")

    monkeypatch.setattr(ob, "_read", no_read)
    with _open(SHIPPED[0], cache_dir=str(tmp_path)) as hit:
        assert hit.compile_cache == "hit"


@pytest.mark.parametrize("isolate", [False, True])
def test_model_exposes_compile_cache(tmp_path: Path, isolate: bool) -> None:
    import edge_runtime as er

    with er.load_model(SHIPPED[0], "openvino:CPU", cache_dir=str(tmp_path), isolate=isolate) as m:
        assert m.compile_cache == "miss"
        assert m.to_dict()["compile_cache"] == "miss"
    with er.load_model(SHIPPED[0], "openvino:CPU", cache_dir=str(tmp_path), isolate=isolate) as m:
        assert m.compile_cache == "hit"
    with er.load_model(SHIPPED[0], "litert:cpu", cache_dir=str(tmp_path)) as m:
        assert m.compile_cache == "off"


def test_key_covers_batch_threads_and_model(tmp_path: Path) -> None:
    cache = str(tmp_path)
    assert _open(SHIPPED[0], cache_dir=cache).compile_cache == "miss"
    assert _open(SHIPPED[0], cache_dir=cache, batch=2).compile_cache == "miss"
    assert _open(SHIPPED[0], cache_dir=cache, batch=2).compile_cache == "hit"
    assert _open(SHIPPED[0], cache_dir=cache, performance_hint="THROUGHPUT").compile_cache == "miss"
    assert _open(SHIPPED[1], cache_dir=cache).compile_cache == "miss"
    assert _open(SHIPPED[0], cache_dir=cache).compile_cache == "hit"
    assert len(_entries(tmp_path)) == 4


def test_ir_key_covers_the_weights(ir_model: Path, tmp_path: Path) -> None:
    cache = str(tmp_path / "cache")
    assert _open(ir_model, cache_dir=cache).compile_cache == "miss"
    assert _open(ir_model, cache_dir=cache).compile_cache == "hit"
    # The same .xml with different weights is another model.
    other = tmp_path / "other"
    other.mkdir()
    (other / ir_model.name).write_bytes(ir_model.read_bytes())
    weights = bytearray(ir_model.with_suffix(".bin").read_bytes())
    weights[-1] ^= 1
    (other / ir_model.with_suffix(".bin").name).write_bytes(bytes(weights))
    assert _open(other / ir_model.name, cache_dir=cache).compile_cache == "miss"
    assert len(_entries(Path(cache))) == 2


def test_onnx_is_left_to_openvino_cache_dir(onnx_model: tuple[Path, Any], tmp_path: Path) -> None:
    with _open(onnx_model[0], cache_dir=str(tmp_path)) as s:
        assert s.compile_cache == "openvino"
    assert not _entries(tmp_path)


def _damage_truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _damage_flip_blob_byte(p: Path) -> None:
    data = bytearray(p.read_bytes())
    data[-100] ^= 0xFF
    p.write_bytes(bytes(data))


def _damage_header(p: Path) -> None:
    data = p.read_bytes()
    magic_end = data.index(b"\n") + 1
    p.write_bytes(data[:magic_end] + b"{not json" + data[data.index(b"\n", magic_end) :])


def _damage_version(p: Path) -> None:
    data = p.read_bytes()
    magic_end = data.index(b"\n") + 1
    header_end = data.index(b"\n", magic_end)
    header = json.loads(data[magic_end:header_end])
    header["key"]["openvino"] = "1999.0.0"
    p.write_bytes(data[:magic_end] + json.dumps(header).encode() + data[header_end:])


def _damage_blob_and_hash(p: Path) -> None:
    """A blob OpenVINO cannot import, with a header that matches it (only import can tell)."""
    import hashlib

    data = p.read_bytes()
    magic_end = data.index(b"\n") + 1
    header_end = data.index(b"\n", magic_end)
    header = json.loads(data[magic_end:header_end])
    blob = b"\0" * 64
    header.update(blob_bytes=len(blob), blob_sha256=hashlib.sha256(blob).hexdigest())
    p.write_bytes(data[:magic_end] + json.dumps(header).encode() + b"\n" + blob)


def _damage_specs(p: Path) -> None:
    """A header whose tensors are not those of its blob (the key still matches)."""
    data = p.read_bytes()
    magic_end = data.index(b"\n") + 1
    header_end = data.index(b"\n", magic_end)
    header = json.loads(data[magic_end:header_end])
    header["inputs"][0]["shape"] = [2, *header["inputs"][0]["shape"][1:]]
    p.write_bytes(data[:magic_end] + json.dumps(header).encode() + data[header_end:])


def _damage_empty(p: Path) -> None:
    p.write_bytes(b"")


@pytest.mark.parametrize(
    "damage",
    [
        _damage_truncate,
        _damage_flip_blob_byte,
        _damage_header,
        _damage_version,
        _damage_blob_and_hash,
        _damage_specs,
        _damage_empty,
    ],
    ids=lambda f: f.__name__.removeprefix("_damage_"),
)
def test_bad_entry_is_warned_about_deleted_and_rebuilt(damage: Any, tmp_path: Path) -> None:
    cold = _open(SHIPPED[0])
    _open(SHIPPED[0], cache_dir=str(tmp_path)).close()
    (entry,) = _entries(tmp_path)
    good = entry.read_bytes()
    damage(entry)
    with pytest.warns(RuntimeWarning, match=entry.name) as caught:
        rebuilt = _open(SHIPPED[0], cache_dir=str(tmp_path))
    assert len(caught) == 1
    assert rebuilt.compile_cache == "miss"
    _same_outputs(cold, rebuilt)
    assert entry.read_bytes() == good or entry.stat().st_size == len(good)  # written again, whole
    again = _open(SHIPPED[0], cache_dir=str(tmp_path))
    assert again.compile_cache == "hit"
    _same_outputs(cold, again)
    assert not list((tmp_path / "edge_runtime-ov").glob(".tmp-*"))


def test_unwritable_cache_dir_only_warns(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.warns(RuntimeWarning, match="cannot write") as caught:
        s = _open(SHIPPED[0], cache_dir=str(blocker))
    assert len(caught) == 1
    assert s.compile_cache == "miss"
    _same_outputs(_open(SHIPPED[0]), s)


# --- 3. batch --------------------------------------------------------------------------------

BATCH_MODELS = SHIPPED + MLPERF_MODELS


@pytest.mark.parametrize("path", BATCH_MODELS, ids=lambda p: p.stem)
def test_batch_rows_equal_single_runs_bit_exact(path: Path) -> None:
    # Measured bit-exact on OpenVINO 2026.4 CPU for every shipped and MLPerf Tiny model: the
    # batched kernels round as the batch-1 ones do, so no tolerance is allowed here.
    one = _open(path)
    four = _open(path, batch=4)
    for s1, s4 in zip(one.inputs + one.outputs, four.inputs + four.outputs):
        assert s4.shape == (4, *s1.shape[1:])
        assert (s4.name, s4.dtype, s4.quantization) == (s1.name, s1.dtype, s1.quantization)
    xs = [np.concatenate([random_input(s, seed) for seed in range(4)]) for s in one.inputs]
    ys = four.run(xs)
    for k in range(4):
        for y4, y1 in zip(ys, one.run([x[k : k + 1] for x in xs])):
            assert np.array_equal(y4[k : k + 1], y1), f"row {k}"


def test_batch_is_cached_and_hit_is_identical(tmp_path: Path) -> None:
    cold = _open(SHIPPED[1], batch=3)
    assert _open(SHIPPED[1], batch=3, cache_dir=str(tmp_path)).compile_cache == "miss"
    hit = _open(SHIPPED[1], batch=3, cache_dir=str(tmp_path))
    assert hit.compile_cache == "hit" and hit.inputs == cold.inputs and hit.outputs == cold.outputs
    _same_outputs(cold, hit)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2", None])
def test_invalid_batch_is_an_argument_error(bad: Any) -> None:
    from edge_runtime.errors import ArgumentError

    with pytest.raises(ArgumentError, match="batch"):
        _open(SHIPPED[0], batch=bad)


def _save_ir(tmp_path: Path, build: Any) -> Path:
    import openvino as ov

    out = tmp_path / "m.xml"
    ov.save_model(build(ov), str(out), compress_to_fp16=False)
    return out


def test_model_with_batch_one_hard_coded_in_a_reshape_is_refused(tmp_path: Path) -> None:
    from edge_runtime.errors import ModelLoadError

    def build(ov: Any) -> Any:
        from openvino import opset13 as ops

        x = ops.parameter([1, 2, 2], np.float32, name="x")
        y = ops.reshape(x, ops.constant(np.array([1, 4], np.int64)), special_zero=False)
        return ov.Model([ops.result(y)], [x], "hard_coded")

    path = _save_ir(tmp_path, build)
    assert _open(path).inputs[0].shape == (1, 2, 2)
    with pytest.raises(ModelLoadError, match="cannot take a batch of 4"):
        _open(path, batch=4)


def test_fixed_first_dimension_other_than_one_is_refused(tmp_path: Path) -> None:
    from edge_runtime.errors import ModelLoadError

    def build(ov: Any) -> Any:
        from openvino import opset13 as ops

        x = ops.parameter([2, 3], np.float32, name="x")
        return ov.Model([ops.result(ops.relu(x))], [x], "fixed2")

    path = _save_ir(tmp_path, build)
    assert _open(path, batch=2).inputs[0].shape == (2, 3)  # already the batch asked for
    with pytest.raises(ModelLoadError, match=r"cannot take a batch of 4: input x has a fixed first dimension of 2"):
        _open(path, batch=4)


def test_infer_runs_through_the_binding_and_matches_the_public_call() -> None:
    """On this OpenVINO the session calls the binding's own infer (no input dispatch, no result
    dict); its outputs are the public ``InferRequest.infer()``'s, bit for bit."""
    import functools

    import numpy as np

    import edge_runtime as er
    from edge_runtime.backends.openvino import infer_call
    from edge_runtime.tensors import random_tensor

    assert isinstance(infer_call(), functools.partial)
    with er.load_model(SHIPPED[0], "openvino:CPU") as m:
        x = random_tensor(m.inputs[0], 3)
        ours = m.infer_raw(x)[0]
        request = m.session._request  # type: ignore[attr-defined]
        public = request.infer({0: x})[0]
        np.testing.assert_array_equal(ours, public)
