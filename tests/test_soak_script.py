"""``scripts/soak.py`` in its shortest setting: the real daemon, one reload, every check run."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import numpy as np
import pytest
from conftest import MLPERF, ROOT

SCRIPT = ROOT / "scripts" / "soak.py"
VWW = MLPERF / "vww_96_int8.tflite"


@pytest.fixture(scope="module")
def script() -> ModuleType:
    """scripts/soak.py imported as a module (its helpers, without running main)."""
    spec = importlib.util.spec_from_file_location("soak_script", SCRIPT)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def soak(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300, cwd=ROOT, env=env
    )


def test_the_shortest_soak_measures_both_phases_and_checks_every_window(tmp_path: Path) -> None:
    # pipelines_in = auto: two pipeline processes on 2+ cores, as the daemon runs them by default.
    args = ["--duration", "2", "--warmup", "1", "--reloads", "1", "--sample-s", "0.5"]
    out = soak(tmp_path, *args, "--json")
    assert out.returncode in (0, 1), out.stderr[-3000:]
    doc = json.loads(out.stdout)
    one, two = doc["phases"]
    for p in (one, two):
        assert p["error"] is None, p["error"]
        assert p["devices_in_records"] == ["litert:cpu"]
        assert all(n > 0 for n in p["results_measured"]) and p["cpu_cores"] > 0
        assert p["lost"] == p["duplicated"] == p["out_of_order"] == p["bad_lines"] == 0
        assert all(v == 0 for v in p["dropped"])
        assert p["daemon_exit"] == 0 and p["latency_us_p50_p99"] is not None
    # --reloads 1, plus the one in the middle of warm-up
    assert len(two["results_per_s"]) == 2 and two["reloads_warmup"] == 1
    assert two["reloads_ok"] == 2 and two["reloads_failed"] == 0
    assert one["reloads_warmup"] == 0 and one["reloads_ok"] == 0
    for p in (one, two):  # the RSS target's medians come from the samples
        assert p["rss_mib_min"] <= p["rss_mib_first_fifth_median"] <= p["rss_mib_max"]
        assert p["rss_mib_steady_diff"] == pytest.approx(
            p["rss_mib_last_fifth_median"] - p["rss_mib_first_fifth_median"], abs=0.011
        )
        assert 0 < p["soak_loop_longest_gap_s"] < 60
    assert set(doc["meta"]) >= {"cpu", "cores", "python", "edge_runtime", "ai_edge_litert", "openvino", "date"}
    meta = doc["meta"]  # the shipped model by default, everything derived from its input
    assert meta["model"] == "basicmotions_int8.tflite" and meta["input_shape"] == [1, 100, 6]
    assert (meta["channels"], meta["window"], meta["preprocess"], meta["frame_samples"]) == (6, 100, "auto", 10)
    assert "channels=6&" in meta["source"] and "frame_samples=10" in meta["source"]
    bare = meta["bare_inference_us"]["litert:cpu"]
    assert bare["error"] is None and 0 < bare["min"] <= bare["median"] <= bare["max"]
    assert len(bare["per_pass"]) == 5
    cap = doc["ratio_caps_from_cores"]["litert:cpu"]
    assert cap == pytest.approx(min(2.0, meta["usable_cores"] / one["cpu_cores"]), abs=0.01)
    share = doc["inference_share_of_a_result"]["litert:cpu"]
    assert share == pytest.approx(bare["median"] * 1e-6 * one["results_per_s_total"], abs=2e-3)
    # On a shared machine only throughput and memory may miss their targets; correctness may not.
    assert all("two/one" in name or "RSS" in name for name in doc["missed"]), doc["missed"]
    assert not list(tmp_path.iterdir()), "the temporary directory is removed"


def test_a_bad_argument_is_a_usage_error(tmp_path: Path) -> None:
    out = soak(tmp_path, "--duration", "0")
    assert out.returncode == 2 and "--duration must be > 0" in out.stderr


def test_a_missing_model_is_a_usage_error_of_one_line(tmp_path: Path) -> None:
    out = soak(tmp_path, "--model", str(tmp_path / "absent.tflite"), "--duration", "1")
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.strip().splitlines() == [f"soak: no such model file: {tmp_path / 'absent.tflite'}"]


def test_the_shipped_model_gives_six_channels_a_window_of_100_and_auto_preprocess(script: ModuleType) -> None:
    plan = script.plan_model(script.MODEL)
    assert (plan.input_shape, plan.channels, plan.window, plan.preprocess) == ((1, 100, 6), 6, 100, "auto")


@pytest.mark.skipif(not VWW.is_file(), reason=f"no MLPerf Tiny models at {MLPERF}")
def test_vww_gives_three_channels_a_window_of_9216_and_no_preprocess(script: ModuleType, tmp_path: Path) -> None:
    plan = script.plan_model(VWW)
    assert (plan.input_shape, plan.channels, plan.window, plan.preprocess) == ((1, 96, 96, 3), 3, 9216, "none")
    cfg = tmp_path / "edge-runtime.toml"
    script.write_config(cfg, 9999, "litert:cpu", [tmp_path / "p1.jsonl"], 50.0, 921, plan)
    text = cfg.read_text()
    assert "window = 9216\n" in text and 'preprocess = "none"\n' in text
    assert "synthetic:sine?channels=3&speed=max&frame_samples=921&stream_id=1" in text
    assert json.dumps(str(VWW)) in text


def test_a_model_with_two_inputs_is_refused(script: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    import edge_runtime

    spec = SimpleNamespace(shape=(1, 100, 6), dtype=np.dtype("int8"))

    class TwoInputs:
        inputs = (spec, spec)

        def __enter__(self) -> Any:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

    monkeypatch.setattr(edge_runtime, "load", lambda path, device, **kw: TwoInputs())
    with pytest.raises(script.UsageError, match="has 2 inputs"):
        script.plan_model(script.MODEL)
