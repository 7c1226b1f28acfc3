"""The child side of model isolation (``isolated.py``): ``python -m edge_runtime.backends.isolated_child FD``.

``FD`` is one end of a Unix socket pair. The child reads ``("open", source, device,
options)``, opens the model with the backend's own ``open_session`` and answers its
tensor specs; then it maps the shared memory the parent sends (``SCM_RIGHTS``) and serves:
per ``R`` byte it copies the inputs from shared memory into the interpreter, runs, copies
the outputs back and answers ``K`` (or ``E`` and the error). ``Q`` or a closed socket ends
it. It ignores SIGINT and SIGTERM (the parent ends it) and gets SIGKILL when the parent
dies (``PR_SET_PDEATHSIG``).

``EDGE_RUNTIME_CHILD_FAULT`` is for tests only: ``segv@open``, ``segv@invoke=N`` (the Nth
inference of each child and every one after it), ``hang@invoke=N``, ``raise@invoke=N`` (the
backend raising a Python exception: reported, the child lives on), each optionally
followed by ``:SUBSTRING`` to act only where ``"DEVICE PATH"`` (``litert:cpu
/models/m.tflite``) contains it. It makes the
child really die (SIGSEGV raised on itself) or really stop answering, so the parent's
recovery runs for real.
"""

from __future__ import annotations

import mmap
import os
import signal
import socket
import sys
import threading
from typing import Any

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _fault(where: str) -> tuple[str, str, int]:
    """(action, step, n) from ``EDGE_RUNTIME_CHILD_FAULT`` for ``where`` ("DEVICE PATH"); ("", "", 0) for none."""
    spec = os.environ.get("EDGE_RUNTIME_CHILD_FAULT", "")
    if not spec:
        return "", "", 0
    spec, _, match = spec.partition(":")
    if match and match not in where:
        return "", "", 0
    action, _, when = spec.partition("@")
    step, _, n = when.partition("=")
    return action, step, int(n or 1)


def _configure_logging(level: int, cli: bool) -> None:
    """Log as the parent does (its level; the CLI's line format when the parent is the CLI)."""
    import logging

    handler = logging.StreamHandler()
    if cli:
        from edge_runtime.cli import _LogFormat

        handler.setFormatter(_LogFormat())
    logging.basicConfig(level=level, handlers=[handler])
    logging.getLogger("edge_runtime").setLevel(level)


def _act(action: str) -> None:
    if action == "segv":
        os.kill(os.getpid(), signal.SIGSEGV)
    elif action == "hang":
        threading.Event().wait()


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _die_with_parent()
    sock = socket.socket(fileno=int(argv[0]))

    import numpy as np

    from edge_runtime.backends import get_backend
    from edge_runtime.backends.isolated import (
        DONE,
        FAILED,
        RUN,
        SPIN_NS,
        layout,
        recv_message,
        send_message,
        spin_read1,
        views,
    )
    from edge_runtime.errors import EdgeRuntimeError

    try:
        _, source, device, options, (level, cli) = recv_message(sock)
    except EOFError:
        return 0
    _configure_logging(level, cli)
    action, step, at = _fault(f"{device.request} {source.path}")
    if action and step == "open":
        _act(action)
    try:
        session = get_backend(device.backend).open_session(source, device, **options)
    except EdgeRuntimeError as exc:
        send_message(sock, ("error", type(exc).__name__, exc.reason))
        return 0
    except Exception as exc:  # noqa: BLE001 - a backend's own exception: reported as a load failure
        send_message(sock, ("error", "ModelLoadError", f"{type(exc).__name__}: {exc}"))
        return 0
    send_message(
        sock,
        (
            "ok",
            {
                "inputs": session.inputs,
                "outputs": session.outputs,
                "op_count": session.op_count,
                "execution_devices": session.execution_devices,
                "fully_accelerated": session.fully_accelerated,
                "placement": session.placement,
                "compile_cache": session.compile_cache,
                "device": session.device,
            },
        ),
    )
    msg, fds, _, _ = socket.recv_fds(sock, 4, 1)
    if not fds:
        return 0
    size = int.from_bytes(msg, "little")
    mm = mmap.mmap(fds[0], size)
    os.close(fds[0])
    in_off, end = layout(session.inputs)
    out_off, _ = layout(session.outputs, end)
    inputs = views(mm, session.inputs, in_off)
    outputs = views(mm, session.outputs, out_off)
    sock.sendall(DONE)
    writable = session.capabilities.writable_inputs
    fd = sock.fileno()
    # a timeout puts the socket in non-blocking mode: spin_read1 polls it, recv waits (for a year)
    sock.settimeout(365 * 86400.0)
    runs = 0
    while True:
        try:
            op = spin_read1(fd, SPIN_NS) or sock.recv(1)  # a call right after the last is caught spinning
        except (OSError, EOFError):
            return 0
        if op != RUN:
            break
        runs += 1
        if action and step == "invoke" and runs >= at and action != "raise":
            _act(action)
        try:
            if action == "raise" and step == "invoke" and runs >= at:
                raise RuntimeError("injected by EDGE_RUNTIME_CHILD_FAULT")
            if writable:
                for i, src in enumerate(inputs):
                    dst = session.input_buffer(i)
                    np.copyto(dst, src)
                    del dst
                session.invoke()
                for i, dst in enumerate(outputs):
                    out = session.output_view(i)
                    np.copyto(dst, out.reshape(dst.shape))
                    del out
            else:
                for dst, out in zip(outputs, session.run(inputs)):
                    np.copyto(dst, out.reshape(dst.shape))
        except EdgeRuntimeError as exc:
            sock.sendall(FAILED)
            send_message(sock, (type(exc).__name__, exc.reason))
            continue
        except Exception as exc:  # noqa: BLE001 - the backend's own error, as InferenceError
            sock.sendall(FAILED)
            send_message(sock, ("InferenceError", f"{type(exc).__name__}: {exc}"))
            continue
        sock.sendall(DONE)
    del inputs, outputs
    session.close()
    return 0


def _run() -> Any:
    try:
        return main(sys.argv[1:])
    except (BrokenPipeError, ConnectionError, EOFError):
        return 0


if __name__ == "__main__":
    sys.exit(_run())
