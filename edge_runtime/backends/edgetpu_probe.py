"""Coral Edge TPUs, enumerated by libedgetpu itself, and whether a model was compiled for one.

``libedgetpu.so.1`` exports ``edgetpu_list_devices(size_t* num_devices)``, returning an array
of ``struct edgetpu_device { enum edgetpu_device_type type; const char* path; }`` (type 0 is
PCIe, 1 is USB) freed by ``edgetpu_free_devices``. It is called in a child process
(``list_edgetpus``): on a broken USB stack the library can crash or hang, which must not take
the caller down. The answer is cached per process and library path.

A model runs on the Edge TPU only where ``edgetpu_compiler`` put its ops into the custom op
``edgetpu-custom-op``; anything else runs on the CPU, and a model never compiled runs there
entirely. ``edgetpu_ops`` reads that from the flatbuffer (pure); ``edgetpu_placement`` says
it in words.

Also here, shared with ``litert_compiled``: ``model_ops`` (operator codes of subgraph 0, read
without any interpreter). The child processes are run by ``probe_child``.
"""

from __future__ import annotations

import functools
import struct
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from ..device_info import Device
from .probe_child import ChildResult, last_json_line, run_probe_child

#: The custom op ``edgetpu_compiler`` puts the Edge TPU's part of a model into.
EDGETPU_CUSTOM_OP = "edgetpu-custom-op"
#: ``enum edgetpu_device_type`` in edgetpu_c.h.
DEVICE_TYPES = {0: "pci", 1: "usb"}
#: Seconds the listing child may take (USB enumeration included).
LIST_TIMEOUT_S = 10.0
NOT_COMPILED = f"not compiled for the Edge TPU (no {EDGETPU_CUSTOM_OP}; run edgetpu_compiler): runs on the CPU"


# --------------------------------------------------------------------------
# Listing Edge TPUs
# --------------------------------------------------------------------------

#: The listing, run as ``python -c CODE LIBRARY``: prints a JSON list of [type, path] pairs, or
#: {"error": ...} (exit status 2) when the library cannot be opened or lacks the symbols.
_LIST_CODE = r"""
import ctypes, json, sys
try:
    lib = ctypes.CDLL(sys.argv[1])
    list_devices, free_devices = lib.edgetpu_list_devices, lib.edgetpu_free_devices
except (OSError, AttributeError) as exc:
    print(json.dumps({"error": str(exc)}))
    sys.exit(2)
class Dev(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("path", ctypes.c_char_p)]
list_devices.restype = ctypes.POINTER(Dev)
list_devices.argtypes = [ctypes.POINTER(ctypes.c_size_t)]
free_devices.argtypes = [ctypes.POINTER(Dev)]
n = ctypes.c_size_t(0)
found = list_devices(ctypes.byref(n))
out = [[int(found[i].type), (found[i].path or b"").decode("utf-8", "replace")] for i in range(n.value)] if found else []
if found:
    free_devices(found)
print(json.dumps(out))
"""


@dataclass(frozen=True)
class Listing:
    """The answer of one ``edgetpu_list_devices`` call: the TPUs as (``usb``/``pci``, path),
    or ``error`` (the child crashed, hung, or the library lacked the call) when not "" ."""

    devices: tuple[tuple[str, str], ...] = ()
    error: str = ""


def parse_listing(result: ChildResult) -> Listing:
    """Turn what the listing child did into a ``Listing``. Pure."""
    answer = last_json_line(result.stdout)
    if isinstance(answer, dict) and "error" in answer:
        return Listing(error=f"cannot call edgetpu_list_devices: {answer['error']}")
    if result.returncode != 0:
        return Listing(error=f"edgetpu_list_devices failed in its probe process ({result.failure})")
    if not isinstance(answer, list):
        return Listing(error="edgetpu_list_devices printed no listing")
    devices: list[tuple[str, str]] = []
    for item in answer:
        if isinstance(item, list) and len(item) == 2 and isinstance(item[0], int):
            devices.append((DEVICE_TYPES.get(item[0], f"type{item[0]}"), str(item[1])))
    return Listing(tuple(devices))


def list_edgetpus(library: str, *, command: Sequence[str] | None = None, timeout_s: float = LIST_TIMEOUT_S) -> Listing:
    """The Edge TPUs ``library`` (a libedgetpu path) sees, asked in a child process.

    ``command``: the child to run instead of the built-in listing (for tests: a child that
    crashes or hangs); it gets ``library`` as its last argument."""
    argv = [*(command or (sys.executable, "-c", _LIST_CODE)), library]
    return parse_listing(run_probe_child(argv, timeout_s))


@functools.lru_cache(maxsize=8)
def _cached_listing(library: str) -> Listing:
    return list_edgetpus(library)


def edgetpu_status(library: str | None, listing: Listing | None) -> tuple[bool, str, str]:
    """(available, reason, full name) of the ``litert:edgetpu`` record. Pure.

    ``library``: the libedgetpu path found (None: absent); ``listing``: its answer."""
    if library is None:
        return False, "libedgetpu.so.1 not found: install libedgetpu1-std (Coral apt repository)", "Coral Edge TPU"
    if listing is None or listing.error:
        why = listing.error if listing is not None else "not asked"
        return False, f"libedgetpu.so.1 found ({library}) but listing its devices failed: {why}", "Coral Edge TPU"
    if not listing.devices:
        return (
            False,
            "libedgetpu.so.1 found but no Edge TPU attached (edgetpu_list_devices returned 0)",
            f"Coral Edge TPU ({library})",
        )
    n = len(listing.devices)
    where = ", ".join(f"{kind} {path}" for kind, path in listing.devices)
    first = f"{listing.devices[0][0]}:0"
    reason = f"{n} Edge TPU{'s' if n > 1 else ''} attached; litert:edgetpu uses the first ({first})"
    return True, reason, f"Coral Edge TPU x{n} ({where}) via {library}"


def edgetpu_device(library: str | None) -> Device:
    """The ``litert:edgetpu`` record: ``library`` asked for its TPUs (cached per process)."""
    listing = _cached_listing(library) if library is not None else None
    ok, reason, full = edgetpu_status(library, listing)
    options = (("library", library),) if library is not None else ()
    return Device("litert", "edgetpu", "tpu", full, int8=True, available=ok, reason=reason, options=options)


# --------------------------------------------------------------------------
# Reading operator codes from a TFLite flatbuffer
# --------------------------------------------------------------------------


class _Flat:
    """The few flatbuffer reads needed here; ``struct.error`` / ``IndexError`` when out of bounds."""

    def __init__(self, buf: bytes) -> None:
        self.buf = buf

    def u32(self, pos: int) -> int:
        if pos < 0:
            raise IndexError(pos)
        return int(struct.unpack_from("<I", self.buf, pos)[0])

    def field(self, table: int, slot: int) -> int:
        vt = table - int(struct.unpack_from("<i", self.buf, table)[0])
        vt_size = int(struct.unpack_from("<H", self.buf, vt)[0])
        entry = 4 + 2 * slot
        return 0 if entry >= vt_size else int(struct.unpack_from("<H", self.buf, vt + entry)[0])

    def deref(self, table: int, slot: int) -> int:
        off = self.field(table, slot)
        return 0 if not off else table + off + self.u32(table + off)

    def tables(self, table: int, slot: int) -> list[int]:
        vec = self.deref(table, slot)
        if not vec:
            return []
        return [vec + 4 + 4 * i + self.u32(vec + 4 + 4 * i) for i in range(self.u32(vec))]

    def string(self, table: int, slot: int) -> str:
        at = self.deref(table, slot)
        if not at:
            return ""
        n = self.u32(at)
        if at + 4 + n > len(self.buf):
            raise IndexError(at)
        return self.buf[at + 4 : at + 4 + n].decode("utf-8", "replace")

    def scalar(self, table: int, slot: int, fmt: str) -> int:
        off = self.field(table, slot)
        return 0 if not off else int(struct.unpack_from(fmt, self.buf, table + off)[0])


def model_ops(content: bytes) -> list[str]:
    """The operators of subgraph 0 (the one an interpreter runs), in order, each as its custom
    code (``edgetpu-custom-op``) or ``builtin:N``. Raises ``ValueError`` when ``content`` is not
    a readable TFLite flatbuffer. Pure; reads ``content`` without copying it."""
    r = _Flat(content)
    try:
        root = r.u32(0)
        codes = []
        for oc in r.tables(root, 1):  # Model.operator_codes
            custom = r.string(oc, 1)  # OperatorCode.custom_code
            builtin = max(r.scalar(oc, 0, "<b"), r.scalar(oc, 3, "<i"))
            codes.append(custom if custom else f"builtin:{builtin}")
        subgraphs = r.tables(root, 2)  # Model.subgraphs
        if not subgraphs:
            return []
        return [codes[r.scalar(op, 0, "<I")] for op in r.tables(subgraphs[0], 3)]  # Operator.opcode_index
    except (struct.error, IndexError) as exc:
        raise ValueError(f"not a readable TFLite flatbuffer: {exc}") from None


@dataclass(frozen=True)
class EdgeTpuOps:
    """Operators of a model's subgraph 0: ``total``, of which ``on_tpu`` are ``edgetpu-custom-op``."""

    total: int
    on_tpu: int


def edgetpu_ops(content: bytes) -> EdgeTpuOps:
    """Count the Edge TPU custom ops in ``content`` (a TFLite flatbuffer). Pure."""
    ops = model_ops(content)
    return EdgeTpuOps(len(ops), sum(1 for op in ops if op == EDGETPU_CUSTOM_OP))


def edgetpu_compiled(content: bytes) -> bool:
    """Whether ``edgetpu_compiler`` compiled ``content`` (it has an ``edgetpu-custom-op``). Pure;
    False for bytes that are not a readable TFLite model."""
    try:
        return edgetpu_ops(content).on_tpu > 0
    except ValueError:
        return False


def edgetpu_placement(content: bytes, request: str) -> tuple[tuple[str, ...], str]:
    """Where a model loaded on ``request`` (``litert:edgetpu...``) really runs, and why, as
    (execution devices, reason; "" when all of it is on the TPU). Pure."""
    try:
        ops = edgetpu_ops(content)
    except ValueError:
        return (), ""
    if ops.on_tpu == 0:
        return ("litert:cpu",), NOT_COMPILED
    if ops.on_tpu == ops.total:
        return (request,), ""
    rest = ops.total - ops.on_tpu
    return (
        (request, "litert:cpu"),
        f"partly on the Edge TPU: {ops.on_tpu} {EDGETPU_CUSTOM_OP} of {ops.total} ops; the other {rest} "
        "were not mapped by edgetpu_compiler and run on the CPU",
    )
