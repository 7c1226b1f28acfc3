"""The daemon's measured choice (``device = "auto:measure"``, ``threads = "auto"``, cached in the
state directory) and dynamic batching between pipelines (``max_batch``, ``max_wait_us``), on
the real interpreters, the shipped model and its recording."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import MODELS, Cli

from edge_runtime.daemon import ConfigError, load_config
from edge_runtime.daemon.notify import Notifier
from edge_runtime.daemon.service import Service
from edge_runtime.errors import ModelLoadError

MODEL = MODELS / "basicmotions_int8.tflite"  # carries a batch through
DIGITS = MODELS / "digits_cnn_int8.tflite"  # a Reshape hard-codes a batch of 1
BUNDLE = MODELS / "digits_early_exit"
RECORDING = MODELS / "basicmotions_recording.csv"
LONG_WAIT_US = 5_000_000  # a batch runs when it is full (every pipeline sent a window), not on time


def write_config(tmp_path: Path, pipelines: str, daemon: str = "", metrics: str = "enabled = false") -> Path:
    path = tmp_path / "edge-runtime.toml"
    path.write_text(f'[daemon]\nstate_dir = "{tmp_path / "state"}"\n{daemon}\n[metrics]\n{metrics}\n{pipelines}')
    return path


def pipeline(name: str, out: Path, extra: str = "", *, model: Path = MODEL, loop: bool = False) -> str:
    query = "speed=max&loop=1" if loop else "speed=max"
    return f"""
[pipelines.{name}]
source = "file:{RECORDING}?{query}"
model = "{model}"
device = "litert:cpu"
threads = 1
policy = "block"
sinks = ["jsonl:{out / (name + ".jsonl")}"]
{extra}
"""


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def serve_to_the_end(cfg: Path) -> Service:
    """Start the service, serve until every recording has ended, close; the service is returned
    for its health (read after the end)."""
    service = Service(load_config(cfg), Notifier(None))
    service.start()
    assert service.health()["state"] == "ready"
    assert service.run() == 0
    return service


def wait_for(predicate: Callable[[], bool], timeout: float = 60.0, what: str = "") -> None:
    done = threading.Event()
    for _ in range(int(timeout / 0.02)):
        if predicate():
            return
        done.wait(0.02)
    raise AssertionError(f"waited {timeout} s for {what}")


# -- batching -----------------------------------------------------------------------------------
@pytest.mark.parametrize("streams", [2, 4])
def test_batched_pipelines_give_every_window_the_unbatched_result_in_order(tmp_path: Path, streams: int) -> None:
    names = [f"imu{i}" for i in range(streams)]
    unbatched, batched = tmp_path / "unbatched", tmp_path / "batched"
    for d in (unbatched, batched):
        d.mkdir()
    plain = write_config(unbatched, "".join(pipeline(n, unbatched) for n in names), 'pipelines_in = "threads"')
    keys = f"max_batch = {streams}\nmax_wait_us = {LONG_WAIT_US}"
    metrics = 'listen = "127.0.0.1:0"'
    cfg = write_config(batched, "".join(pipeline(n, batched, keys) for n in names), metrics=metrics)  # auto
    serve_to_the_end(plain)
    service = serve_to_the_end(cfg)
    assert not service.in_processes  # auto runs batched pipelines on threads

    health = service.health()["pipelines"]
    stats = health[names[0]]["batching"]
    assert stats["shared_with"] == names  # one batcher for all of them
    assert all(health[n]["batching"]["shared_with"] == names for n in names)
    windows = len(records(unbatched / f"{names[0]}.jsonl"))
    assert windows > 10
    assert stats["samples"] == windows * streams and stats["failed_batches"] == 0
    assert stats["mean_batch"] > 1 and max(int(k) for k in stats["by_fill"]) > 1
    assert service.batchers.live() == []  # closed with its last pipeline
    service._refresh()  # what a scrape of /metrics does first
    text = service.metrics.text().decode() if service.metrics is not None else ""
    label = f'batcher="{"+".join(names)}"'
    assert f"edge_runtime_batch_samples{{{label}}} {float(windows * streams)}" in text, text
    assert f"edge_runtime_batch_mean_size{{{label}}} " in text and f"edge_runtime_batch_batches{{{label}}} " in text

    for n in names:
        want, got = records(unbatched / f"{n}.jsonl"), records(batched / f"{n}.jsonl")
        assert [r["window_index"] for r in got] == list(range(windows))  # every window, in order
        assert [(r["label"], r["scores"]) for r in got] == [(r["label"], r["scores"]) for r in want]


def test_a_model_that_cannot_take_the_batch_fails_its_pipeline_with_the_reason(tmp_path: Path, cli: Cli) -> None:
    keys = "max_batch = 2\nwindow = 28"
    cfg = write_config(
        tmp_path, pipeline("a", tmp_path, keys, model=DIGITS) + pipeline("b", tmp_path, keys, model=DIGITS)
    )
    service = Service(load_config(cfg), Notifier(None))
    with pytest.raises(ModelLoadError) as info:
        service.start()
    assert "pipelines.a" in str(info.value) and "cannot take a batch of 2" in str(info.value)
    assert service.batchers.live() == []
    proc = cli("serve", "--check", cfg)
    assert proc.returncode != 0 and "cannot take a batch of 2" in proc.stderr, proc.stderr


def test_a_reload_that_changes_batching_keys_gives_that_pipeline_its_own_batcher(tmp_path: Path) -> None:
    def write(b_keys: str) -> Path:
        keys = "max_batch = 2\nmax_wait_us = 2000"
        return write_config(
            tmp_path, pipeline("a", tmp_path, keys, loop=True) + pipeline("b", tmp_path, b_keys, loop=True)
        )

    cfg = write("max_batch = 2\nmax_wait_us = 2000")
    service = Service(load_config(cfg), Notifier(None))
    service.start()
    runner = threading.Thread(target=service.run, daemon=True)
    runner.start()
    try:
        wait_for(lambda: all(w.results > 5 for w in service.workers), what="results from both pipelines")
        health = service.health()["pipelines"]
        assert health["a"]["batching"]["shared_with"] == ["a", "b"]
        (first,) = service.batchers.live()
        write("max_batch = 4\nmax_wait_us = 2000")
        service.request_reload()
        wait_for(lambda: service.reloads["ok"] == 1, what="the reload")
        wait_for(lambda: len(service.batchers.live()) == 2, what="b's own batcher")

        def sharing(name: str) -> list[str]:
            return list(service.health()["pipelines"][name]["batching"]["shared_with"])

        # the swaps take effect between two windows, a moment after the reload returns
        wait_for(lambda: sharing("a") == ["a"] and sharing("b") == ["b"], what="the swaps")
        health = service.health()["pipelines"]
        assert health["b"]["batching"]["shared_with"] == ["b"] and health["b"]["batching"]["max_batch"] == 4
        assert first in service.batchers.live()  # a keeps its batcher
        write("")  # b unbatched: it leaves its batcher, which is closed
        service.request_reload()
        wait_for(lambda: service.reloads["ok"] == 2, what="the second reload")
        wait_for(lambda: service.batchers.live() == [first], what="b's batcher closed")
        assert "batching" not in service.health()["pipelines"]["b"]
        before = {w.name: w.results for w in service.workers}
        wait_for(lambda: all(w.results > before[w.name] + 5 for w in service.workers), what="results after reloads")
    finally:
        service.stop.set()
        service._wake.set()
        runner.join(60)
    assert not runner.is_alive()
    assert service.batchers.live() == [] and first.closed


def test_batching_keys_and_what_they_cannot_go_with(tmp_path: Path) -> None:
    ok = load_config(write_config(tmp_path, pipeline("a", tmp_path, "max_batch = 4\nmax_wait_us = 0")))
    assert ok.pipelines[0].max_batch == 4 and ok.pipelines[0].max_wait_us == 0
    default = load_config(write_config(tmp_path, pipeline("a", tmp_path)))
    assert default.pipelines[0].max_batch == 1 and default.pipelines[0].max_wait_us == 1000

    bad = [
        ("max_batch = 0", "", "pipelines.a.max_batch: must be a whole number >= 1, got 0"),
        ("max_batch = 2.5", "", "pipelines.a.max_batch: must be a whole number, got 2.5"),
        ("max_wait_us = -1", "", "pipelines.a.max_wait_us: must be >= 0, got -1"),
        ("max_batch = 2", 'pipelines_in = "processes"', "pipelines.a.max_batch: batching shares one model"),
        ("max_batch = 2\nisolate = true", "", "pipelines.a.max_batch: an isolated model (isolate = true)"),
        ("max_batch = 2\nthresholds = [0.5]", "", "pipelines.a.max_batch: an early-exit bundle"),
        ("max_batch = 2\nmax_wait_us = 20000000", "", "pipelines.a.max_wait_us: 2e+07 us is not below"),
        ('threads = "fast"', "", "pipelines.a.threads: must be a whole number, got 'fast' (or \"auto\": measured)"),
    ]
    for extra, daemon, message in bad:
        with pytest.raises(ConfigError) as info:
            load_config(write_config(tmp_path, pipeline("a", tmp_path, extra).replace("threads = 1\n", ""), daemon))
        assert message in info.value.reason, (extra, info.value.reason)
    text = f'[pipelines.a]\nsource = "file:{RECORDING}"\nmodel = "{BUNDLE}"\nmax_batch = 2\n'
    with pytest.raises(ConfigError, match="early-exit bundle runs one window at a time"):
        load_config(write_config(tmp_path, text))


# -- measured choice ----------------------------------------------------------------------------
@pytest.mark.parametrize("pipelines_in", ["threads", "processes"])
def test_measured_choice_is_cached_in_the_state_dir_and_taken_at_the_next_start(
    tmp_path: Path, pipelines_in: str
) -> None:
    def start(device: str, threads: str, probe: bool) -> dict[str, Any]:
        extra = f"probe = {'true' if probe else 'false'}\n"
        text = pipeline("a", tmp_path, extra).replace('device = "litert:cpu"\nthreads = 1\n', device + threads)
        cfg = write_config(tmp_path, text, f'pipelines_in = "{pipelines_in}"')
        service = Service(load_config(cfg), Notifier(None))
        service.start()
        try:
            health = service.health()
            assert health["state"] == "ready", health
            return dict(health["pipelines"]["a"])
        finally:
            service.close()

    cache = tmp_path / "state" / "measure.json"
    # probe off: the measurement is made by the load itself, so the log says "measured now"
    first = start('device = "auto:measure"\n', 'threads = "auto"\n', probe=False)
    assert cache.is_file()
    assert "device and threads measured now: fastest of" in first["loaded"], first
    stamp = cache.stat().st_mtime_ns
    again = start('device = "auto:measure"\n', 'threads = "auto"\n', probe=True)
    assert "device and threads taken from the measurement cache: fastest of" in again["loaded"], again
    plain = start("", "", probe=True)  # plain auto, threads unset: takes the cached decision
    assert "taken from the measurement cache" in plain["loaded"], plain
    assert cache.stat().st_mtime_ns == stamp  # nothing measured again
    if pipelines_in == "threads":
        assert isinstance(first["threads"], int) and first["threads"] == plain["threads"]
    assert first["device"] == again["device"] == plain["device"]


def test_a_device_error_moves_every_pipeline_of_a_batcher_to_one_batcher_on_the_next_device(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from concurrent.futures import Future

    from edge_runtime.batching import DynamicBatcher
    from edge_runtime.errors import InferenceError

    real = DynamicBatcher.submit_classify
    calls = {"n": 0}

    def failing(self: DynamicBatcher, x: Any) -> Future[Any]:
        if self.device == "litert:cpu":
            calls["n"] += 1
            if calls["n"] > 10:  # the device breaks after 10 windows: every later window fails here
                fut: Future[Any] = Future()
                fut.set_exception(InferenceError("the device went away", device=self.device))
                return fut
        return real(self, x)

    monkeypatch.setattr(DynamicBatcher, "submit_classify", failing)
    keys = "max_batch = 2\nmax_wait_us = 2000"
    text = pipeline("a", tmp_path, keys) + pipeline("b", tmp_path, keys)
    cfg = write_config(tmp_path, text.replace('device = "litert:cpu"', 'device = ["litert:cpu", "openvino:CPU"]'))
    service = serve_to_the_end(cfg)
    health = service.health()["pipelines"]
    windows = len(records(tmp_path / "a.jsonl"))
    assert windows > 20
    for name in ("a", "b"):
        got = records(tmp_path / f"{name}.jsonl")
        assert [r["window_index"] for r in got] == list(range(windows))  # the failed window ran again
        assert got[0]["device"] == "litert:cpu" and got[-1]["device"] == "openvino:CPU"
        assert health[name]["device"] == "openvino:CPU"
        (w,) = [w for w in service.workers if w.name == name]
        assert w.fallbacks == 1 and "fell back from litert:cpu to openvino:CPU" in w.degraded
        assert health[name]["batching"]["shared_with"] == ["a", "b"]  # one new batcher for both
    assert service.batchers.live() == []
