"""Model isolation: a backend session that runs in a child process.

``load(path, device, isolate=True)`` opens the model in a child process
(``python -m edge_runtime.backends.isolated_child``) instead of this one, so a native
crash or a hang inside an interpreter (a malformed file that passes every check, a
delegate that faults) kills only the child:

- **Inputs and outputs go through shared memory**: one ``memfd`` mapping in both
  processes holds every input and output tensor (64-byte aligned). The caller writes an
  input through ``input_buffer`` straight into it; the child copies it into its
  interpreter's tensor, runs, and copies each output back. Per inference one byte goes
  each way over a Unix socket; nothing is pickled per frame. ``scripts/bench_isolation.py``
  measures what this costs against the same model in process.
- **A crash** (the child died: the reason names the signal) or **a hang** (no answer
  within ``Isolation.timeout_s``: the child is killed) raises ``ModelCrashError``; the
  session starts a new child at its next call, after a back-off that doubles from
  ``backoff_s`` up to ``backoff_max_s``. After ``max_crashes`` crashes within
  ``window_s`` the session is **quarantined**: every call raises
  ``ModelQuarantinedError`` and no child is started again.
- **Loading** in the child is bounded by ``load_timeout_s``; a child that dies while
  opening the model gives a ``ModelLoadError`` naming the signal, so ``load`` goes on to
  the next device of the request, as for any device that refuses a model.

The child ignores SIGINT and SIGTERM (the parent decides when it ends: it closes the
socket) and dies with its parent (``PR_SET_PDEATHSIG``). Linux only (``memfd_create``,
``SCM_RIGHTS``); elsewhere ``isolate=True`` is an ``ArgumentError``.
"""

from __future__ import annotations

import logging
import mmap
import os
import pickle
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ..device_info import Device
from ..errors import (
    ArgumentError,
    EdgeRuntimeError,
    InferenceError,
    ModelClosedError,
    ModelCrashError,
    ModelLoadError,
    ModelQuarantinedError,
)
from ..model_file import ModelSource
from ..tensors import TensorSpec
from .base import Capabilities, Session
from .isolation_policy import Isolation, as_isolation
from .probe_child import describe_exit

log = logging.getLogger("edge_runtime.isolation")

#: Per-call bytes on the socket: parent -> child.
RUN = b"R"
#: child -> parent: the outputs are in shared memory.
DONE = b"K"
#: child -> parent: an error follows (a length-prefixed pickled ``(type name, reason)``).
FAILED = b"E"

_ALIGN = 64
_LEN = struct.Struct("<I")


def unsupported_reason() -> str | None:
    """Why isolation cannot run on this platform, or None."""
    if not sys.platform.startswith("linux"):
        return f"model isolation needs Linux (memfd_create, SCM_RIGHTS); this is {sys.platform}"
    return None


def log_setup() -> tuple[int, bool]:
    """What the child's logging copies from this process: the ``edge_runtime`` logger's level,
    and whether this is the CLI (its ``edge-runtime: info: ...`` line format), so a child's log
    lines (LiteRT's delegate line, warnings) read as the parent's would."""
    cli = any(type(h.formatter).__name__ == "_LogFormat" for h in logging.getLogger().handlers)
    return logging.getLogger("edge_runtime").getEffectiveLevel(), cli


#: How long each side polls for the other's byte before it sleeps in the kernel (nanoseconds).
#: Waking a process that sleeps on an idle core costs 30-50 us here (more in a VM), twice per
#: inference; polling first, with ``sched_yield`` so a single core still runs the other side,
#: catches an answer that comes within this time without that cost.
SPIN_NS = 300_000


def spin_read1(fd: int, spin_ns: int) -> bytes:
    """One byte from the non-blocking ``fd`` if it arrives within ``spin_ns``; b"" if not (then
    block as usual). ``EOFError`` when the other side closed."""
    end = time.perf_counter_ns() + spin_ns
    while True:
        try:
            data = os.read(fd, 1)
        except BlockingIOError:
            if time.perf_counter_ns() >= end:
                return b""
            os.sched_yield()
            continue
        if not data:
            raise EOFError("the other process closed the connection")
        return data


def send_message(sock: socket.socket, obj: Any) -> None:
    """One length-prefixed pickle (control messages only, never per inference)."""
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    sock.sendall(_LEN.pack(len(data)) + data)


def recv_exact(sock: socket.socket, n: int) -> bytes:
    """Exactly ``n`` bytes; ``EOFError`` when the other side closed first."""
    parts = []
    while n:
        chunk = sock.recv(n)
        if not chunk:
            raise EOFError("the other process closed the connection")
        parts.append(chunk)
        n -= len(chunk)
    return b"".join(parts)


def recv_message(sock: socket.socket) -> Any:
    (n,) = _LEN.unpack(recv_exact(sock, _LEN.size))
    return pickle.loads(recv_exact(sock, n))


def layout(specs: tuple[TensorSpec, ...], start: int = 0) -> tuple[list[int], int]:
    """Byte offsets of ``specs`` packed from ``start`` (each 64-byte aligned) and the end offset."""
    offsets = []
    at = start
    for s in specs:
        at = -(-at // _ALIGN) * _ALIGN
        offsets.append(at)
        at += int(np.prod(s.shape, dtype=np.int64)) * np.dtype(s.dtype).itemsize
    return offsets, at


def views(buf: Any, specs: tuple[TensorSpec, ...], offsets: list[int]) -> list[npt.NDArray[Any]]:
    """Arrays over ``buf`` (an ``mmap``), one per spec at its offset; they share its memory."""
    return [
        np.ndarray(s.shape, dtype=s.dtype, buffer=buf, offset=o)
        for s, o in zip(specs, offsets)  # type: ignore[call-overload]
    ]


class _Child:
    """One child process with its socket and shared mapping; ``alive`` until it dies or is closed."""

    def __init__(self, proc: subprocess.Popen[bytes], sock: socket.socket) -> None:
        self.proc = proc
        self.sock = sock
        self.mm: mmap.mmap | None = None
        self.inputs: list[npt.NDArray[Any]] = []
        self.outputs: list[npt.NDArray[Any]] = []

    def kill(self) -> int | None:
        """Kill (if still running), reap and close; the exit code (negative: the signal)."""
        if self.proc.poll() is None:
            try:
                self.proc.kill()
            except ProcessLookupError:
                pass
        try:
            code = self.proc.wait(10)
        except subprocess.TimeoutExpired:  # a child in uninterruptible sleep: leave it to init
            code = None
        self.sock.close()
        return code

    def exit_code(self, wait_s: float = 2.0) -> int | None:
        """The child's exit code once it has gone (it closed the socket), waiting up to ``wait_s``."""
        try:
            return self.proc.wait(wait_s)
        except subprocess.TimeoutExpired:
            return None


class IsolatedSession(Session):
    """A model opened by a backend in a child process; this process holds only shared memory.

    Made by ``open_isolated``. ``input_buffer`` views and ``output_view`` views are the
    shared mapping itself (writes go straight to the child; outputs are valid until the
    next run). ``run`` copies its arrays in and returns new arrays (one copy each out).
    Thread-safe in the sense every session is not: one caller at a time.
    """

    capabilities = Capabilities(writable_inputs=True)

    def __init__(self, source: ModelSource, device: Device, options: dict[str, Any], policy: Isolation) -> None:
        self.backend = device.backend
        self.device = device.request
        self.policy = policy
        self._source = source
        self._device_info = device
        self._options = options
        self._where = str(source.path)
        self._lock = threading.Lock()
        self._crashes: list[float] = []
        self._last_crash = ""
        self._closed = False
        #: Children started so far (1 after a clean load); restarts are ``starts - 1``.
        self.starts = 0
        self.quarantined = False
        self._child: _Child | None = None
        self._child = self._spawn(first=True)

    # -- the child's life --------------------------------------------------------------------
    def _error(self, cls: type[EdgeRuntimeError], reason: str) -> EdgeRuntimeError:
        return cls(reason, path=self._where, backend=self.backend, device=self.device)

    def _spawn(self, first: bool) -> _Child:
        """Start a child, open the model in it and map the tensors; raises ``ModelLoadError``."""
        parent, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "edge_runtime.backends.isolated_child", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                close_fds=True,
            )
        except OSError as exc:
            parent.close()
            raise self._error(ModelLoadError, f"could not start the model's process: {exc}") from None
        finally:
            theirs.close()
        child = _Child(proc, parent)
        self.starts += 1
        parent.settimeout(self.policy.load_timeout_s)
        try:
            send_message(parent, ("open", self._source, self._device_info, self._options, log_setup()))
            reply = recv_message(parent)
            if reply[0] == "error":
                _, cls_name, reason = reply
                child.kill()
                cls = ModelLoadError if cls_name not in _REBUILD else _REBUILD[cls_name]
                raise self._error(cls, reason)
            _, info = reply
            if first:
                self.inputs = info["inputs"]
                self.outputs = info["outputs"]
                self.op_count = info["op_count"]
                self.execution_devices = info["execution_devices"]
                self.fully_accelerated = info.get("fully_accelerated")
                self.placement = info.get("placement", "")
                self.compile_cache = info.get("compile_cache", "off")
                self.device = info["device"]
            elif (info["inputs"], info["outputs"]) != (self.inputs, self.outputs):
                child.kill()
                raise self._error(ModelLoadError, "the restarted model's tensors differ from the first load's")
            in_off, end = layout(self.inputs)
            out_off, end = layout(self.outputs, end)
            fd = os.memfd_create("edge_runtime-tensors", os.MFD_CLOEXEC)
            try:
                os.ftruncate(fd, max(end, 1))
                child.mm = mmap.mmap(fd, max(end, 1))
                socket.send_fds(parent, [_LEN.pack(max(end, 1))], [fd])
            finally:
                os.close(fd)
            if recv_exact(parent, 1) != DONE:
                raise EOFError("the child did not map the tensors")
        except TimeoutError:
            child.kill()
            raise self._error(
                ModelLoadError, f"the model's process did not open it within {self.policy.load_timeout_s:g} s: killed"
            ) from None
        except (EOFError, ConnectionError):
            code = child.exit_code()
            child.kill()
            raise self._error(
                ModelLoadError, f"the model's process died while opening it ({describe_exit(code)})"
            ) from None
        except BaseException:
            child.kill()
            raise
        child.inputs = views(child.mm, self.inputs, in_off)
        child.outputs = views(child.mm, self.outputs, out_off)
        for v in child.outputs:
            v.flags.writeable = False
        parent.settimeout(self.policy.timeout_s)
        if not first:
            log.warning("edge_runtime: %s on %s: the model's process was restarted", self._where, self.device)
        return child

    def _ready(self) -> _Child:
        """The live child, restarting a crashed one after its back-off; raises when closed or quarantined."""
        if self._closed:
            raise self._error(ModelClosedError, "model is closed")
        if self.quarantined:
            raise self._error(
                ModelQuarantinedError, f"quarantined after {len(self._crashes)} crashes: {self._last_crash}"
            )
        if self._child is not None:
            return self._child
        wait = self._crashes[-1] + self.policy.backoff(len(self._crashes)) - time.monotonic()
        if wait > 0:
            time.sleep(wait)  # the back-off between two children of a crashing model
        try:
            self._child = self._spawn(first=False)
        except ModelLoadError as exc:
            self._crashed(f"restart failed: {exc.reason}")
            raise self._crash_error() from None
        return self._child

    def _crashed(self, reason: str) -> None:
        now = time.monotonic()
        self._crashes = [t for t in self._crashes if now - t < self.policy.window_s] + [now]
        self._last_crash = reason
        if len(self._crashes) >= self.policy.max_crashes:
            self.quarantined = True
            log.error(
                "edge_runtime: %s on %s: quarantined after %d crashes within %g s: %s",
                self._where,
                self.device,
                len(self._crashes),
                self.policy.window_s,
                reason,
            )
        else:
            log.error(
                "edge_runtime: %s on %s: %s; a new process starts in %.1f s",
                self._where,
                self.device,
                reason,
                self.policy.backoff(len(self._crashes)),
            )

    def _crash_error(self) -> EdgeRuntimeError:
        if self.quarantined:
            return self._error(
                ModelQuarantinedError, f"quarantined after {len(self._crashes)} crashes: {self._last_crash}"
            )
        return self._error(ModelCrashError, self._last_crash)

    @property
    def crashes(self) -> int:
        """Crashes and hangs within the last ``window_s``."""
        return len(self._crashes)

    @property
    def pid(self) -> int | None:
        """The running child's process id (None between a crash and the restart)."""
        return self._child.proc.pid if self._child is not None else None

    # -- the Session contract ----------------------------------------------------------------
    def invoke(self) -> None:
        with self._lock:
            child = self._ready()
            try:
                child.sock.sendall(RUN)
                reply = spin_read1(child.sock.fileno(), SPIN_NS) or recv_exact(child.sock, 1)
            except TimeoutError:
                child.kill()
                self._child = None
                self._crashed(f"inference did not return within {self.policy.timeout_s:g} s: its process was killed")
                raise self._crash_error() from None
            except (EOFError, ConnectionError):
                code = child.exit_code()
                child.kill()
                self._child = None
                self._crashed(f"the model's process died during inference ({describe_exit(code)})")
                raise self._crash_error() from None
            if reply != DONE:
                cls_name, reason = recv_message(child.sock)
                raise self._error(_REBUILD.get(cls_name, InferenceError), reason)

    def input_buffer(self, index: int) -> npt.NDArray[Any]:
        return self._ready().inputs[index]

    def output_view(self, index: int) -> npt.NDArray[Any]:
        if self._child is None:
            raise self._error(InferenceError, "no outputs: the model's process is not running")
        return self._child.outputs[index]

    def run_prepared(self) -> list[npt.NDArray[Any]]:
        self.invoke()
        return [self.output_view(i).copy() for i in range(len(self.outputs))]

    def run(self, arrays: list[npt.NDArray[Any]]) -> list[npt.NDArray[Any]]:
        child = self._ready()
        for dst, src in zip(child.inputs, arrays):
            np.copyto(dst, src, casting="no")
        return self.run_prepared()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            child, self._child = self._child, None
        if child is None:
            return
        try:
            child.sock.sendall(b"Q")
        except OSError:
            pass
        if child.exit_code(2.0) is None:
            log.warning("edge_runtime: %s: the model's process did not exit when closed: killed", self._where)
        child.kill()
        child.inputs = child.outputs = []


#: Error types the child may report, rebuilt by name in the parent.
_REBUILD: dict[str, type[EdgeRuntimeError]] = {
    "ModelLoadError": ModelLoadError,
    "InferenceError": InferenceError,
    "ArgumentError": ArgumentError,
}


def open_isolated(source: ModelSource, device: Device, policy: Isolation, **options: Any) -> IsolatedSession:
    """Open ``source`` on ``device`` in a child process; raise ``ModelLoadError`` as a backend would."""
    reason = unsupported_reason()
    if reason:
        raise ArgumentError(reason, path=str(source.path))
    return IsolatedSession(source, device, options, policy)


def trial_load(
    path: str | Path, device: str | Sequence[str] = "auto", *, timeout_s: float = 30.0, **options: Any
) -> str:
    """Load ``path`` (a model file or a bundle) in a throwaway child process and run it once on a
    zero input; return the device it loaded on. Nothing stays loaded here.

    For a file nobody has run on this machine yet (a reload, a model someone sent): a file that
    crashes or hangs a native reader or interpreter kills only the throwaway child. Raises what
    ``load`` raises, and ``ModelLoadError`` naming the signal when the child died or hung while
    loading or running (``timeout_s``: the longest that one inference may take).
    ``options``: ``load``'s (threads, cache_dir, openvino_config, ...).
    """
    from ..loader import load

    policy = Isolation(timeout_s=timeout_s, max_crashes=1)
    with load(path, device, isolate=policy, **options) as runner:
        spec = runner.inputs[0]
        try:
            runner.classify(np.zeros(spec.shape, spec.dtype))
        except ModelCrashError as exc:
            raise ModelLoadError(
                f"trial run in a child process failed: {exc.reason}", path=str(path), device=runner.device
            ) from None
        return runner.device


__all__ = [
    "DONE",
    "FAILED",
    "RUN",
    "SPIN_NS",
    "IsolatedSession",
    "Isolation",
    "as_isolation",
    "describe_exit",
    "layout",
    "open_isolated",
    "recv_message",
    "send_message",
    "spin_read1",
    "trial_load",
    "unsupported_reason",
    "views",
]
