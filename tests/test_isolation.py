"""Model isolation: the real interpreters in a real child process, real shared memory, real signals.

A crash or hang is made by ``EDGE_RUNTIME_CHILD_FAULT`` (see ``isolated_child.py``): the child
really dies of SIGSEGV or really stops answering, so everything the parent does after it runs
for real. The daemon tests run the real ``edge-runtime serve``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import BACKENDS, MODELS, ROOT
from test_daemon_reload import health, pipeline, wait_for
from test_daemon_service import Systemd, free_port, lines, serving, wait_until_lines

import edge_runtime as er
from edge_runtime.backends.isolated import IsolatedSession, Isolation, trial_load

MODEL = MODELS / "basicmotions_int8.tflite"
BUNDLE = MODELS / "digits_early_exit"
FAST = Isolation(backoff_s=0.01, timeout_s=5.0)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="isolation needs Linux")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as fh:  # a zombie is not alive
        return fh.read().split(")")[-1].split()[0] != "Z"


def session_of(model: er.Runner | er.Model) -> IsolatedSession:
    assert isinstance(model, er.Model)
    s = model.session
    assert isinstance(s, IsolatedSession)
    return s


@pytest.mark.parametrize("backend", BACKENDS)
def test_isolated_outputs_are_bit_identical_to_in_process(backend: str) -> None:
    device = "litert:cpu" if backend == "litert" else "openvino:CPU"
    rng = np.random.default_rng(0)
    with er.load_model(MODEL, device) as ref, er.load_model(MODEL, device, isolate=True) as iso:
        assert iso.device == ref.device and iso.inputs == ref.inputs and iso.outputs == ref.outputs
        assert session_of(iso).pid != os.getpid()
        for _ in range(5):
            x = rng.normal(size=ref.inputs[0].shape).astype(np.float32)
            for a, b in zip(ref.infer(x), iso.infer(x)):
                np.testing.assert_array_equal(a, b)
            xq = er.tensors.random_tensor(ref.inputs[0], int(rng.integers(1000)))
            for a, b in zip(ref.infer_raw(xq), iso.infer_raw(xq)):
                np.testing.assert_array_equal(a, b)
            ca, cb = ref.classify(x), iso.classify(x)
            assert ca.label_index == cb.label_index and np.array_equal(ca.scores, cb.scores)


def test_an_isolated_bundle_gives_the_same_results() -> None:
    data = np.load(BUNDLE / "test.npz")
    with er.load(BUNDLE, "litert:cpu") as ref, er.load(BUNDLE, "litert:cpu", isolate=True) as iso:
        for x in data["x"][:20]:
            a, b = ref.classify(x[None]), iso.classify(x[None])
            assert (a.label_index, a.exit_index) == (b.label_index, b.exit_index)
            np.testing.assert_array_equal(a.scores, b.scores)


def test_a_crash_in_inference_kills_only_the_child_which_restarts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGE_RUNTIME_CHILD_FAULT", "segv@invoke=3")
    with er.load(MODEL, "litert:cpu", isolate=FAST) as model:
        s = session_of(model)
        x = np.zeros(model.inputs[0].shape, np.float32)
        expected = model.infer(x)
        model.infer(x)
        first = s.pid
        assert first is not None
        with pytest.raises(er.ModelCrashError, match="SIGSEGV") as info:
            model.infer(x)
        assert not isinstance(info.value, er.ModelQuarantinedError)
        assert str(MODEL) in str(info.value) and "litert:cpu" in str(info.value)
        assert s.pid is None and not alive(first)
        for a, b in zip(model.infer(x), expected):  # a new child, the same answer
            np.testing.assert_array_equal(a, b)
        assert s.pid not in (None, first) and s.starts == 2 and s.crashes == 1


def test_repeated_crashes_quarantine_the_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGE_RUNTIME_CHILD_FAULT", "segv@invoke=1")
    with er.load(MODEL, "litert:cpu", isolate=FAST) as model:
        s = session_of(model)
        x = np.zeros(model.inputs[0].shape, np.float32)
        for _ in range(2):
            with pytest.raises(er.ModelCrashError) as info:
                model.infer(x)
            assert not isinstance(info.value, er.ModelQuarantinedError)
        with pytest.raises(er.ModelQuarantinedError, match="quarantined after 3 crashes"):
            model.infer(x)
        starts = s.starts
        with pytest.raises(er.ModelQuarantinedError):
            model.infer(x)
        assert s.starts == starts == 3 and s.pid is None  # no child is started for a quarantined model


def test_an_error_raised_in_the_child_is_an_inference_error_and_the_child_lives_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("EDGE_RUNTIME_CHILD_FAULT", "raise@invoke=2")
    with er.load(MODEL, "litert:cpu", isolate=FAST) as model:
        s = session_of(model)
        x = np.zeros(model.inputs[0].shape, np.float32)
        model.infer(x)
        pid = s.pid
        with pytest.raises(er.InferenceError, match="RuntimeError: injected") as info:
            model.infer(x)
        assert not isinstance(info.value, er.ModelCrashError)  # not a crash: no restart, no count
        assert s.pid == pid and s.crashes == 0 and s.starts == 1


def test_a_hung_inference_is_killed_after_the_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGE_RUNTIME_CHILD_FAULT", "hang@invoke=2")
    with er.load(MODEL, "openvino:CPU", isolate=Isolation(timeout_s=0.5, backoff_s=0.01)) as model:
        s = session_of(model)
        x = np.zeros(model.inputs[0].shape, np.float32)
        model.infer(x)
        hung = s.pid
        assert hung is not None
        with pytest.raises(er.ModelCrashError, match=r"did not return within 0\.5 s"):
            model.infer(x)
        assert not alive(hung)
        model.infer(x)  # the first inference of the new child


def test_a_crash_while_loading_is_a_load_error_and_the_next_device_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGE_RUNTIME_CHILD_FAULT", "segv@open")
    with pytest.raises(er.ModelLoadError, match="died while opening it \\(SIGSEGV\\)") as info:
        er.load(MODEL, "litert:cpu", isolate=True)
    assert str(MODEL) in str(info.value)
    # only openvino's child dies: litert, next in the list, loads the model
    monkeypatch.setenv("EDGE_RUNTIME_CHILD_FAULT", "segv@open:openvino")
    with er.load(MODEL, ["openvino:CPU", "litert:cpu"], isolate=True) as model:
        assert model.device == "litert:cpu"
        assert any("openvino:CPU" in a and "SIGSEGV" in a for a in model.attempts), model.attempts


def test_closing_ends_the_child_and_later_calls_say_closed() -> None:
    model = er.load(MODEL, "litert:cpu", isolate=True)
    s = session_of(model)
    pid = s.pid
    assert pid is not None and alive(pid)
    model.close()
    model.close()
    assert not alive(pid)
    with pytest.raises(er.ModelClosedError):
        s.invoke()


def test_the_child_ignores_sigint_and_sigterm_and_dies_with_its_parent(tmp_path: Path) -> None:
    code = (
        "import os, sys, edge_runtime as er\n"
        f"m = er.load({str(MODEL)!r}, 'litert:cpu', isolate=True)\n"
        "print(m.session.pid, flush=True)\n"
        "sys.stdin.read()\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    os.kill(child, signal.SIGINT)
    os.kill(child, signal.SIGTERM)
    assert alive(child)  # still there: the parent decides
    parent.kill()
    parent.wait()
    wait_for(lambda: not alive(child), timeout=10, what="the child to die with its parent")


def test_trial_load_runs_the_model_once_in_a_throwaway_child(monkeypatch: pytest.MonkeyPatch) -> None:
    assert trial_load(MODEL, "litert:cpu") == "litert:cpu"
    assert trial_load(BUNDLE, "openvino:CPU") == "openvino:CPU"
    monkeypatch.setenv("EDGE_RUNTIME_CHILD_FAULT", "segv@invoke=1")
    with pytest.raises(er.ModelLoadError, match=r"trial run in a child process failed.*SIGSEGV"):
        trial_load(MODEL, "litert:cpu")


def test_bad_isolation_values_are_argument_errors() -> None:
    with pytest.raises(er.ArgumentError, match="timeout_s"):
        Isolation(timeout_s=0)
    with pytest.raises(er.ArgumentError, match="max_crashes"):
        Isolation(max_crashes=0)
    with pytest.raises(er.ArgumentError, match="isolate must be"):
        er.load(MODEL, "litert:cpu", isolate="yes")  # type: ignore[arg-type]
    assert Isolation(backoff_s=0.5, backoff_max_s=3).backoff(1) == 0.5
    assert Isolation(backoff_s=0.5, backoff_max_s=3).backoff(4) == 3


def test_info_on_a_file_that_crashes_the_reader_is_one_clean_line(tmp_path: Path) -> None:
    env = {**os.environ, "EDGE_RUNTIME_CHILD_FAULT": "segv@open"}
    cmd = [sys.executable, "-m", "edge_runtime", "info", str(MODEL), "-d", "litert:cpu"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert r.returncode == 1, r
    assert "SIGSEGV" in r.stderr and "Traceback" not in r.stderr, r.stderr
    # the in-process path never starts a child, so the (child-only) fault cannot reach it
    r = subprocess.run([*cmd, "--no-isolate"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert r.returncode == 0 and "litert:cpu" in r.stdout, r


# -- the daemon ----------------------------------------------------------------------------------
def _head(tmp_path: Path, port: int, pipelines_in: str) -> str:
    return (
        f'[daemon]\nstate_dir = "{tmp_path / "state"}"\npipelines_in = "{pipelines_in}"\n'
        f'[metrics]\nlisten = "127.0.0.1:{port}"\n'
    )


@pytest.mark.parametrize("pipelines_in", ["threads", "processes"])
def test_daemon_quarantines_a_crashing_model_and_serves_the_last_good_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pipelines_in: str
) -> None:
    bad = tmp_path / "crashing_copy.tflite"
    shutil.copy(MODEL, bad)
    shutil.copy(MODEL.with_suffix(".json"), bad.with_suffix(".json"))
    monkeypatch.setenv("EDGE_RUNTIME_CHILD_FAULT", "segv@invoke=5:crashing_copy")
    port = free_port()
    cfg = tmp_path / "edge-runtime.toml"
    out = tmp_path / "imu.jsonl"
    head = _head(tmp_path, port, pipelines_in)
    cfg.write_text(head + pipeline("imu", out, extra="isolate = true"))
    systemd = Systemd(tmp_path)
    with serving(cfg, systemd) as proc:
        systemd.wait_for("READY")
        wait_until_lines(out, 5)
        cfg.write_text(head + pipeline("imu", out, model=bad, extra="isolate = true"))
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: health(port)["reloads"]["ok"] == 1, what="the reload")

        def back_on_the_last_good() -> bool:
            return "serving the last good model" in " ".join(health(port)["why"])

        wait_for(back_on_the_last_good, what="the crashing model to be quarantined")
        h = health(port)
        p = h["pipelines"]["imu"]
        assert p["model_crashes"] == 3 and "crashing_copy.tflite" in p["quarantined"][0], h
        assert h["state"] == "degraded" and "serving the last good model" in " ".join(h["why"]), h
        n = len(lines(out))
        wait_until_lines(out, n + 20)  # the last good model serves on
        _, metrics = __import__("test_daemon_service").get(port, "/metrics")
        assert 'edge_runtime_models_quarantined_total{pipeline="imu"} 1.0' in metrics
        assert 'edge_runtime_model_crashes_total{pipeline="imu"} 3.0' in metrics
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    records = lines(out, final=True)
    idx = [r["window_index"] for r in records]
    assert len(idx) == len(set(idx)), "a window was written twice"


def test_daemon_probe_refuses_a_reload_whose_model_crashes_its_reader(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = tmp_path / "crashing_copy.tflite"
    shutil.copy(MODEL, bad)
    monkeypatch.setenv("EDGE_RUNTIME_CHILD_FAULT", "segv@open:crashing_copy")
    port = free_port()
    cfg = tmp_path / "edge-runtime.toml"
    out = tmp_path / "imu.jsonl"
    head = _head(tmp_path, port, "threads")
    cfg.write_text(head + pipeline("imu", out))
    systemd = Systemd(tmp_path)
    with serving(cfg, systemd) as proc:
        systemd.wait_for("READY")
        wait_until_lines(out, 5)
        cfg.write_text(head + pipeline("imu", out, model=bad))
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: health(port)["reloads"]["failed"] == 1, what="the reload to fail")
        h = health(port)
        assert "probe in a child process" in h["why"][0] and "SIGSEGV" in h["why"][0], h
        n = len(lines(out))
        wait_until_lines(out, n + 10)  # the old model serves on, in the daemon's own process
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0


def test_readme_example_config_keys_exist() -> None:
    text = (ROOT / "edge_runtime" / "data" / "edge-runtime.example.toml").read_text()
    assert "isolate = false" in text and "probe = true" in text
