"""A bounds check of a TFLite flatbuffer, in pure Python, before any interpreter sees it.

Why: ``ai_edge_litert`` runs the flatbuffer verifier on ``model_content=``, but
``tflite_runtime`` 2.14 does not, and crashes the whole process (SIGSEGV) on a
truncated model; OpenVINO's TFLite reader is not documented to verify either. This
walk follows every table, vector and string of the TFLite schema that an
interpreter reads (model, operator codes, subgraphs, tensors, quantization,
operators and their option tables, buffers, metadata, signatures), checks that each
lies inside the file, that tensor, buffer and opcode indices are in range, and that the
tensors' declared sizes fit a memory budget (``TENSOR_BUDGET_BYTES``).

Walked in full: every table and vector named above, every string (which must also
be UTF-8, as interpreters decode tensor names), and the index fields (tensor, buffer,
opcode, subgraph, metadata buffer). Only bounds-checked: the header of each operator's
option table and of a tensor's sparsity table (not the vectors inside them), and
``variant_tensors`` and large custom options are not read. So this is a structural
check, not a semantic one: a model that passes can still be refused by the
interpreter (unknown op, bad shapes); it then fails with the interpreter's own error.
Field numbers follow tensorflow/lite/schema/schema.fbs.
"""

from __future__ import annotations

import struct

from .errors import ModelFileError

_U8 = struct.Struct("<B")
_U16 = struct.Struct("<H")
_I32 = struct.Struct("<i")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


class _Corrupt(Exception):
    pass


class _Reader:
    def __init__(self, buf: bytes) -> None:
        self.buf = buf
        self.size = len(buf)

    def need(self, pos: int, n: int, what: str) -> None:
        if pos < 0 or pos + n > self.size:
            raise _Corrupt(f"{what} at byte {pos} (+{n}) lies outside the {self.size}-byte file")

    def u32(self, pos: int, what: str) -> int:
        self.need(pos, 4, what)
        return int(_U32.unpack_from(self.buf, pos)[0])

    def table(self, pos: int, what: str) -> _Table:
        self.need(pos, 4, what)
        vt = pos - int(_I32.unpack_from(self.buf, pos)[0])
        self.need(vt, 4, f"{what} vtable")
        vt_size, obj_size = _U16.unpack_from(self.buf, vt)[0], _U16.unpack_from(self.buf, vt + 2)[0]
        if vt_size < 4 or vt_size % 2:
            raise _Corrupt(f"{what} vtable at byte {vt} has a bad size {vt_size}")
        self.need(vt, vt_size, f"{what} vtable")
        self.need(pos, obj_size, what)
        return _Table(self, pos, vt, vt_size, obj_size, what)


class _Table:
    def __init__(self, r: _Reader, pos: int, vt: int, vt_size: int, obj_size: int, what: str) -> None:
        self.r, self.pos, self.vt, self.vt_size, self.obj_size, self.what = r, pos, vt, vt_size, obj_size, what

    def _field(self, slot: int) -> int:
        entry = 4 + 2 * slot
        if entry >= self.vt_size:
            return 0
        off = int(_U16.unpack_from(self.r.buf, self.vt + entry)[0])
        if off and off + 1 > self.obj_size:
            raise _Corrupt(f"{self.what} field {slot} at offset {off} lies outside its {self.obj_size}-byte table")
        return off

    def scalar(self, slot: int, fmt: struct.Struct, default: int = 0) -> int:
        off = self._field(slot)
        if not off:
            return default
        self.r.need(self.pos + off, fmt.size, f"{self.what} field {slot}")
        return int(fmt.unpack_from(self.r.buf, self.pos + off)[0])

    def _target(self, slot: int) -> int | None:
        off = self._field(slot)
        if not off:
            return None
        at = self.pos + off
        return at + self.r.u32(at, f"{self.what} field {slot}")

    def table(self, slot: int, what: str) -> _Table | None:
        at = self._target(slot)
        return None if at is None else self.r.table(at, what)

    def vector(self, slot: int, elem_size: int, what: str) -> tuple[int, int]:
        """(start of elements, count); (0, 0) when absent."""
        at = self._target(slot)
        if at is None:
            return 0, 0
        n = self.r.u32(at, what)
        self.r.need(at + 4, n * elem_size, f"{what} ({n} elements)")
        return at + 4, n

    def string(self, slot: int, what: str) -> None:
        start, n = self.vector(slot, 1, what)
        if start:
            self.r.need(start, n + 1, f"{what} (with its terminating zero)")
            try:
                self.r.buf[start : start + n].decode("utf-8")
            except UnicodeDecodeError as exc:
                raise _Corrupt(f"{what} at byte {start} is not UTF-8 ({exc.reason})") from None

    def tables(self, slot: int, what: str) -> list[_Table]:
        start, n = self.vector(slot, 4, what)
        return [self.r.table(start + 4 * i + self.r.u32(start + 4 * i, what), f"{what}[{i}]") for i in range(n)]

    def ints(self, slot: int, what: str) -> list[int]:
        start, n = self.vector(slot, 4, what)
        return [int(_I32.unpack_from(self.r.buf, start + 4 * i)[0]) for i in range(n)]


#: Bytes per element of each TFLite TensorType (schema.fbs order; INT4 counted as 1 byte, as
#: interpreters unpack it; a type this table does not know counts as 8 bytes).
_TYPE_BYTES = (4, 2, 4, 1, 8, 8, 1, 2, 8, 1, 8, 16, 8, 8, 8, 4, 2, 1, 2)

#: The most bytes the tensors of a model may declare together, by default (1 GiB). An
#: interpreter allocates the non-constant ones at load: a flipped bit in a dimension can ask
#: for terabytes (the OOM killer, or a crash), so that is refused here first.
TENSOR_BUDGET_BYTES = 1 << 30


def check_tflite(content: bytes, path: str, tensor_budget: int = TENSOR_BUDGET_BYTES) -> None:
    """Raise ``ModelFileError`` when ``content`` is not a structurally sound TFLite model, or
    when its tensors declare more than ``tensor_budget`` bytes together (dynamic dimensions,
    -1, counted as 1)."""
    try:
        declared = _walk(_Reader(content))
    except _Corrupt as exc:
        raise ModelFileError(f"truncated or corrupt TFLite model: {exc}", path=path) from None
    if declared > tensor_budget:
        raise ModelFileError(
            f"its tensors declare {'2**62 or more' if declared >= _HUGE else format(declared, ',')} bytes together, "
            f"more than the memory budget of "
            f"{tensor_budget:,} bytes (a corrupt dimension, or a model too large for this device)",
            path=path,
        )


def _tensor_bytes(shape: list[int], tensor_type: int) -> int:
    n = _TYPE_BYTES[tensor_type] if tensor_type < len(_TYPE_BYTES) else 8
    for d in shape:
        n *= max(d, 1)
        if n > _HUGE:  # a corrupt rank-1000 shape must not build a 10,000-digit number
            return _HUGE
    return n


#: Where counting declared bytes stops (2**62): far above any budget, and printable.
_HUGE = 1 << 62


def _walk(r: _Reader) -> int:
    """Check the model; return the bytes its tensors declare together."""
    declared = 0
    model = r.table(r.u32(0, "root offset"), "model")
    opcodes = model.tables(1, "operator_codes")
    for i, oc in enumerate(opcodes):
        oc.string(1, f"operator_codes[{i}].custom_code")
    buffers = model.tables(4, "buffers")
    for i, b in enumerate(buffers):
        b.vector(0, 1, f"buffers[{i}].data")
        offset, size = b.scalar(1, _U64), b.scalar(2, _U64)
        if offset > 1 and offset + size > r.size:  # data stored after the flatbuffer (models > 2 GB)
            raise _Corrupt(f"buffers[{i}] data at byte {offset} (+{size}) lies outside the {r.size}-byte file")
    subgraphs = model.tables(2, "subgraphs")
    if not subgraphs:
        raise _Corrupt("the model has no subgraph")
    tensor_counts: list[int] = []
    for g, sg in enumerate(subgraphs):
        tensors = sg.tables(0, f"subgraphs[{g}].tensors")
        tensor_counts.append(len(tensors))
        for t, tensor in enumerate(tensors):
            where = f"subgraphs[{g}].tensors[{t}]"
            declared = min(_HUGE, declared + _tensor_bytes(tensor.ints(0, f"{where}.shape"), tensor.scalar(1, _U8)))
            tensor.ints(7, f"{where}.shape_signature")
            tensor.string(3, f"{where}.name")
            if tensor.scalar(2, _U32) >= max(len(buffers), 1):
                raise _Corrupt(f"{where} names buffer {tensor.scalar(2, _U32)} of {len(buffers)}")
            q = tensor.table(4, f"{where}.quantization")
            if q is not None:
                q.vector(0, 4, f"{where}.quantization.min")
                q.vector(1, 4, f"{where}.quantization.max")
                q.vector(2, 4, f"{where}.quantization.scale")
                q.vector(3, 8, f"{where}.quantization.zero_point")
            tensor.table(6, f"{where}.sparsity")
        n = len(tensors)
        for name, slot in (("inputs", 1), ("outputs", 2)):
            for idx in sg.ints(slot, f"subgraphs[{g}].{name}"):
                if not 0 <= idx < n:
                    raise _Corrupt(f"subgraphs[{g}].{name} names tensor {idx} of {n}")
        for o, op in enumerate(sg.tables(3, f"subgraphs[{g}].operators")):
            where = f"subgraphs[{g}].operators[{o}]"
            if op.scalar(0, _U32) >= len(opcodes):
                raise _Corrupt(f"{where} uses operator code {op.scalar(0, _U32)} of {len(opcodes)}")
            for name, slot in (("inputs", 1), ("outputs", 2), ("intermediates", 8)):
                for idx in op.ints(slot, f"{where}.{name}"):
                    if not -1 <= idx < n:
                        raise _Corrupt(f"{where}.{name} names tensor {idx} of {n}")
            op.table(4, f"{where}.builtin_options")
            op.vector(5, 1, f"{where}.custom_options")
            op.vector(7, 1, f"{where}.mutating_variable_inputs")
            op.table(12, f"{where}.builtin_options_2")
        sg.string(4, f"subgraphs[{g}].name")
    model.string(3, "description")
    model.ints(5, "metadata_buffer")
    for i, meta in enumerate(model.tables(6, "metadata")):
        meta.string(0, f"metadata[{i}].name")
        if meta.scalar(1, _U32) >= max(len(buffers), 1):
            raise _Corrupt(f"metadata[{i}] names buffer {meta.scalar(1, _U32)} of {len(buffers)}")
    for i, sig in enumerate(model.tables(7, "signature_defs")):
        graph = sig.scalar(4, _U32)
        if graph >= len(subgraphs):
            raise _Corrupt(f"signature_defs[{i}] names subgraph {graph} of {len(subgraphs)}")
        for name, slot in (("inputs", 0), ("outputs", 1)):
            for j, tm in enumerate(sig.tables(slot, f"signature_defs[{i}].{name}")):
                tm.string(0, f"signature_defs[{i}].{name}[{j}].name")
                if tm.scalar(1, _U32) >= tensor_counts[graph]:
                    raise _Corrupt(f"signature_defs[{i}].{name}[{j}] names tensor {tm.scalar(1, _U32)}")
        sig.string(2, f"signature_defs[{i}].signature_key")
    return declared
