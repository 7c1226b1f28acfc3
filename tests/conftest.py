"""Shared fixtures: real models (shipped, MLPerf Tiny reference, and ones built here), and ``cli``,
which runs the ``edge-runtime`` command as a user runs it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Any

import numpy as np
import pytest

try:  # Imported here, at a shallow stack: CPython 3.11.7 fails to compile hypothesis's modules
    import hypothesis  # noqa: F401  # when its pytest plugin first imports them deep in the summary hook.
except ImportError:
    pass

# Measured device choices (edge_runtime/measure.py) are cached per user; the suite keeps its own,
# so a developer's cached measurement never steers a test's plain `auto` load (children inherit it).
os.environ["EDGE_RUNTIME_MEASURE_CACHE"] = tempfile.mkdtemp(prefix="edge-runtime-test-measure-")

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
DATA = Path(__file__).resolve().parent / "data"
MLPERF = Path(os.environ.get("EDGE_RUNTIME_MLPERF_DIR", ROOT.parent / "shared" / "models" / "mlperf_tiny"))

SHIPPED = sorted(MODELS.glob("*.tflite"))
MLPERF_MODELS = sorted(MLPERF.glob("*.tflite")) if MLPERF.is_dir() else []


def backend_available(name: str) -> bool:
    from edge_runtime.backends import unavailable_reason

    return unavailable_reason(name) is None


BACKENDS = [
    pytest.param(b, marks=pytest.mark.skipif(not backend_available(b), reason=f"{b} not installed"))
    for b in ("litert", "openvino")
]


def sidecar(model: Path) -> dict[str, Any]:
    raw: dict[str, Any] = json.loads(model.with_suffix(".json").read_text())
    return raw


class Running:
    """A started ``edge-runtime`` process; its stdout and stderr are read line by line as they come.

    ``wait_for("stderr", PATTERN)`` blocks until such a line arrives (no fixed sleeps);
    ``finish()`` waits for the exit and returns a ``CompletedProcess`` of everything written.
    As a context manager, it kills the process if the test left it running.
    """

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: dict[str, list[str]] = {"stdout": [], "stderr": []}
        self._ended: set[str] = set()
        self._changed = threading.Condition()
        self._pumps = [
            threading.Thread(target=self._pump, args=(name, stream), daemon=True)
            for name, stream in (("stdout", proc.stdout), ("stderr", proc.stderr))
        ]
        for t in self._pumps:
            t.start()

    def _pump(self, name: str, stream: IO[str] | None) -> None:
        assert stream is not None
        for line in stream:
            with self._changed:
                self.lines[name].append(line)
                self._changed.notify_all()
        with self._changed:
            self._ended.add(name)
            self._changed.notify_all()

    def wait_for(self, name: str, pattern: str, timeout: float = 60) -> re.Match[str]:
        """The first line of ``name`` ("stdout" or "stderr") matching ``pattern``; waits at most ``timeout`` s."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines[name]:
                    if m := rx.search(line):
                        return m
                left = deadline - time.monotonic()
                if name in self._ended or left <= 0:
                    why = "ended" if name in self._ended else f"wrote nothing like it in {timeout} s"
                    raise AssertionError(
                        f"{name} {why} without a line matching {pattern!r}; it wrote:\n"
                        + "".join(self.lines[name])[-2000:]
                        + "\nand on the other stream:\n"
                        + "".join(self.lines["stderr" if name == "stdout" else "stdout"])[-2000:]
                    )
                self._changed.wait(left)

    def finish(self, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Wait for the exit (``subprocess.TimeoutExpired`` after ``timeout`` s) and return all it wrote."""
        self.proc.wait(timeout)
        for t in self._pumps:
            t.join(timeout)
        return subprocess.CompletedProcess(
            self.proc.args, self.proc.returncode, "".join(self.lines["stdout"]), "".join(self.lines["stderr"])
        )

    def __enter__(self) -> Running:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for t in self._pumps:  # they end at the pipes' EOF, now that the process is gone
            t.join(10)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


class Cli:
    """Runs ``python -m edge_runtime ARGS...`` as a real subprocess, in the repository root.

    ``cli(*args)`` waits for it (at most ``timeout`` seconds) and returns the
    ``CompletedProcess`` (text stdout and stderr); ``cli.start(*args)`` returns it ``Running``,
    for tests that talk to it while it runs (signals after a given line).
    Third-party ``warnings`` are silenced (``PYTHONWARNINGS=ignore``): a backend's deprecation
    notice is not the command's output. OpenVINO's import-time usage telemetry (seen to hang a
    forked child holding the command's output open) is kept off by the package itself
    (``backends/openvino.py``), so the environment is otherwise the user's.
    """

    def __init__(self) -> None:
        self.env = {**os.environ, "PYTHONWARNINGS": "ignore"}

    @staticmethod
    def argv(*args: str | Path) -> list[str]:
        return [sys.executable, "-m", "edge_runtime", *map(str, args)]

    def __call__(self, *args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(*args), capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=self.env, check=False
        )

    def start(self, *args: str | Path) -> Running:
        proc = subprocess.Popen(
            self.argv(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=self.env
        )
        return Running(proc)


@pytest.fixture(scope="session")
def cli() -> Cli:
    """Run the ``edge-runtime`` command: ``cli("info", path, "--json").stdout``."""
    return Cli()


@pytest.fixture(scope="session")
def digits_model() -> Path:
    path = MODELS / "digits_cnn_int8.tflite"
    assert path.is_file(), "models/digits_cnn_int8.tflite is shipped with the repository"
    return path


@pytest.fixture
def mlperf(request: pytest.FixtureRequest) -> Path:
    if not MLPERF.is_dir():
        pytest.skip(f"MLPerf Tiny reference models not found at {MLPERF}")
    return MLPERF


def random_input(spec: Any, seed: int = 0) -> np.ndarray[Any, Any]:
    from edge_runtime.tensors import random_tensor

    return random_tensor(spec, seed)


@pytest.fixture(scope="session")
def ir_model(tmp_path_factory: pytest.TempPathFactory, digits_model: Path) -> Path:
    """The shipped digits model converted to OpenVINO IR (.xml + .bin) by OpenVINO itself."""
    if not backend_available("openvino"):
        pytest.skip("openvino not installed")
    import openvino as ov

    out = tmp_path_factory.mktemp("ir") / "digits.xml"
    ov.save_model(ov.Core().read_model(str(digits_model)), str(out), compress_to_fp16=False)
    return out


@pytest.fixture(scope="session")
def onnx_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray[Any, Any]]:
    """A QDQ ONNX model: int8 [N,4] -> dequantize(0.05, 3) -> MatMul W -> quantize(0.1, -5) -> int8 [N,3]."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    w = (np.arange(12, dtype=np.float32).reshape(4, 3) - 6) / 10
    nodes = [
        helper.make_node("DequantizeLinear", ["x", "xs", "xz"], ["xf"]),
        helper.make_node("MatMul", ["xf", "W"], ["y"]),
        helper.make_node("QuantizeLinear", ["y", "ys", "yz"], ["q"]),
    ]
    inits = [
        numpy_helper.from_array(np.array(0.05, np.float32), "xs"),
        numpy_helper.from_array(np.array(3, np.int8), "xz"),
        numpy_helper.from_array(w, "W"),
        numpy_helper.from_array(np.array(0.1, np.float32), "ys"),
        numpy_helper.from_array(np.array(-5, np.int8), "yz"),
    ]
    graph = helper.make_graph(
        nodes,
        "qdq",
        [helper.make_tensor_value_info("x", TensorProto.INT8, ["N", 4])],
        [helper.make_tensor_value_info("q", TensorProto.INT8, ["N", 3])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = tmp_path_factory.mktemp("onnx") / "qdq.onnx"
    onnx.save(model, str(path))
    return path, w
