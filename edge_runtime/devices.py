"""Finding accelerators (``probe``) apart from choosing one (``select``).

``probe()`` touches hardware and vendor libraries and returns plain ``Device``
records. ``select()`` is a pure function of (requests, devices, model format): it
returns the ordered candidates and, for every device passed over, the reason. The
impure part, trying candidates in order and falling back when one fails to load,
lives in ``edge_runtime.model.load``.

Device request grammar (a string a person can type; ``load`` also takes a list of
them, tried in order)::

    request   := ("auto" | KIND) [":measure"] | "litert:" LITERT | "openvino:" OVDEVICE
               | "onnxruntime:" PROVIDER (";" KEY "=" VALUE)*
    KIND      := "cpu" | "gpu" | "npu" | "tpu" | "fpga"     any backend, that kind
    LITERT    := "cpu"                                       XNNPACK on the CPU
               | "edgetpu" [":" ("usb" | "pci") [":" N]]     Coral Edge TPU (libedgetpu.so.1)
               | "gpu"                                       CompiledModel, LiteRT's GPU accelerator (WebGPU)
               | "npu"                                       CompiledModel, a vendor NPU dispatch library
               | "vx"                                        VeriSilicon VX NPU delegate (i.MX 8M Plus)
               | "delegate=" PATH (";" KEY "=" VALUE)*       any external delegate .so
    OVDEVICE  := NAME ["." N]                                CPU, GPU.0, NPU, a registered plugin
               | ("AUTO" | "MULTI") [":" NAME ("," NAME)*]   OpenVINO picks/spreads among them (all if none)
               | ("HETERO" | "BATCH") ":" NAME ("," NAME)*   split by op support in priority order / batching
    PROVIDER  := "CPU" | "CUDA" | "TensorRT" | any provider the installed ONNX Runtime lists, by its
                 short or full name (QNN, OpenVINOExecutionProvider); KEY=VALUE: provider options

``:measure`` (``auto:measure``, ``cpu:measure``): compile the model on every candidate the
request selects, at several thread counts (1, 2, the cores; OpenVINO also its own default),
time each on a random input and load on the fastest (``edge_runtime.measure``; about a second
for a small model). The decision is cached per model, candidates, runtime versions and CPU;
plain ``auto`` takes a cached decision when there is one. With a named device,
``threads="auto"`` measures only the thread counts on that device.

Aliases: ``edgetpu`` = ``litert:edgetpu``, ``litert:xnnpack`` = ``litert:cpu``.

``auto`` prefers an NPU or TPU, then a GPU, then the CPU; among equal kinds it tries
the backends in the order of ``model_file.READERS`` (LiteRT first for ``.tflite``).
FPGA and "other" devices are never picked by ``auto``: name them. Devices that say
they lack int8 are skipped by ``auto`` (a named request still tries them).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from .backends import LITERT, ONNXRUNTIME, OPENVINO, REGISTRY, get_backend
from .device_info import KINDS, Device, openvino_kind
from .errors import BackendUnavailableError, DeviceRequestError
from .model_file import READERS

if TYPE_CHECKING:
    from .measure import MeasuredChoice

#: ``auto`` order: lower first. Kinds absent here are never chosen by ``auto``.
AUTO_RANK = {"npu": 0, "tpu": 0, "gpu": 1, "cpu": 2}
OPENVINO_META = ("AUTO", "MULTI", "HETERO", "BATCH")
_OV_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*(\.[0-9]+)?$")
MEASURE_SUFFIX = ":measure"
_LITERT_TARGETS = ("cpu", "gpu", "npu", "edgetpu", "vx", "delegate=PATH")


@dataclass(frozen=True)
class DeviceRequest:
    """A parsed device request. ``backend`` is None for ``auto`` and kind requests."""

    text: str
    backend: str | None = None
    kind: str | None = None
    target: str | None = None
    options: tuple[tuple[str, str], ...] = ()
    members: tuple[str, ...] = ()
    #: ``auto:measure`` / ``KIND:measure``: time the candidates and load on the fastest.
    measure: bool = False

    @property
    def is_auto(self) -> bool:
        return self.backend is None and self.kind is None


@dataclass(frozen=True)
class Candidate:
    """A device to try, the request that named it and why it is in the list."""

    device: Device
    request: str
    why: str


@dataclass(frozen=True)
class PassedOver:
    """A device (or request) left out, and why."""

    request: str
    device: str
    reason: str

    def __str__(self) -> str:
        return f"{self.device or self.request}: {self.reason}"


@dataclass(frozen=True)
class Selection:
    """The result of ``select``: candidates in the order to try, and what was left out."""

    candidates: tuple[Candidate, ...]
    passed_over: tuple[PassedOver, ...] = field(default=())
    #: The measured table behind the order, when the choice was measured (or read from the cache).
    measurement: MeasuredChoice | None = None


def parse_request(text: str) -> DeviceRequest:
    """Parse one device request; raise ``DeviceRequestError`` saying what was expected."""
    raw = text.strip()
    low = raw.lower()
    if low.endswith(MEASURE_SUFFIX):
        base = low[: -len(MEASURE_SUFFIX)]
        if base == "auto":
            return DeviceRequest(raw, measure=True)
        if base in KINDS and base != "other":
            return DeviceRequest(raw, kind=base, measure=True)
        raise DeviceRequestError(
            f"cannot measure {raw!r}: ':measure' follows 'auto' or a kind (auto:measure, cpu:measure); "
            "for a named device pass threads='auto'",
            device=text,
        )
    if low == "auto":
        return DeviceRequest(raw)
    if low in KINDS and low != "other":
        return DeviceRequest(raw, kind=low)
    if low == "edgetpu":
        return _parse_litert(raw, "edgetpu")
    prefix, sep, rest = raw.partition(":")
    if sep and prefix.lower() == LITERT:
        return _parse_litert(raw, rest)
    if sep and prefix.lower() == OPENVINO:
        return _parse_openvino(raw, rest)
    if sep and prefix.lower() == ONNXRUNTIME:
        return _parse_onnxruntime(raw, rest)
    raise DeviceRequestError(
        f"cannot parse device request {text!r}: expected 'auto', a kind (cpu, gpu, npu, tpu, fpga), "
        "either one with ':measure', "
        f"'litert:<{'|'.join(_LITERT_TARGETS)}>', 'openvino:<DEVICE>' (e.g. openvino:NPU, openvino:AUTO:NPU,CPU) "
        "or 'onnxruntime:<PROVIDER>' (e.g. onnxruntime:CPU, onnxruntime:CUDA, onnxruntime:TensorRT)",
        device=text,
    )


def _parse_litert(raw: str, rest: str) -> DeviceRequest:
    low = rest.lower()
    if low in ("cpu", "xnnpack"):
        return DeviceRequest(raw, LITERT, target="cpu")
    if low in ("gpu", "npu", "vx"):
        return DeviceRequest(raw, LITERT, target=low)
    if low == "edgetpu" or low.startswith("edgetpu:"):
        parts = low.split(":")[1:]
        if parts and (parts[0] not in ("usb", "pci") or len(parts) > 2 or (len(parts) == 2 and not parts[1].isdigit())):
            raise DeviceRequestError(
                f"cannot parse Edge TPU request {raw!r}: expected litert:edgetpu, litert:edgetpu:usb, "
                "litert:edgetpu:usb:0 or litert:edgetpu:pci:0",
                backend=LITERT,
                device=raw,
            )
        tpu_options: tuple[tuple[str, str], ...] = (("device", ":".join(parts)),) if parts else ()
        return DeviceRequest(raw, LITERT, target="edgetpu", options=tpu_options)
    if rest.startswith("delegate="):
        path, *pairs = rest[len("delegate=") :].split(";")
        if not path:
            raise DeviceRequestError(f"delegate request {raw!r} names no library path", backend=LITERT, device=raw)
        options: list[tuple[str, str]] = [("library", path)]
        for pair in pairs:
            key, eq, value = pair.partition("=")
            if not eq or not key:
                raise DeviceRequestError(
                    f"delegate option {pair!r} in {raw!r} is not KEY=VALUE", backend=LITERT, device=raw
                )
            options.append((key, value))
        return DeviceRequest(raw, LITERT, target="delegate", options=tuple(options))
    raise DeviceRequestError(
        f"unknown LiteRT device {rest!r} in {raw!r}: expected one of {', '.join(_LITERT_TARGETS)}",
        backend=LITERT,
        device=raw,
    )


def _parse_openvino(raw: str, rest: str) -> DeviceRequest:
    meta, sep, tail = rest.partition(":")
    if sep:
        meta_up = meta.upper()
        if meta_up not in OPENVINO_META:
            raise DeviceRequestError(
                f"unknown OpenVINO virtual device {meta!r} in {raw!r}: expected one of {', '.join(OPENVINO_META)}",
                backend=OPENVINO,
                device=raw,
            )
        members = tuple(_ov_name(raw, m) for m in tail.split(","))
        return DeviceRequest(raw, OPENVINO, target=f"{meta_up}:{','.join(members)}", members=members)
    name = _ov_name(raw, rest)
    if name in ("HETERO", "BATCH"):
        raise DeviceRequestError(
            f"openvino:{name} needs its devices listed, e.g. openvino:{name}:GPU,CPU", backend=OPENVINO, device=raw
        )
    if name in OPENVINO_META:  # bare AUTO / MULTI: over every device OpenVINO found
        return DeviceRequest(raw, OPENVINO, target=name, members=())
    return DeviceRequest(raw, OPENVINO, target=name)


_PROVIDER_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


def _parse_onnxruntime(raw: str, rest: str) -> DeviceRequest:
    name, *pairs = rest.split(";")
    name = name.strip()
    if not _PROVIDER_NAME.match(name):
        raise DeviceRequestError(
            f"bad ONNX Runtime provider {name!r} in {raw!r}: expected a provider name like CPU, CUDA, TensorRT "
            "(options after ';', e.g. onnxruntime:CUDA;device_id=0)",
            backend=ONNXRUNTIME,
            device=raw,
        )
    options: list[tuple[str, str]] = []
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key.strip():
            raise DeviceRequestError(
                f"provider option {pair!r} in {raw!r} is not KEY=VALUE", backend=ONNXRUNTIME, device=raw
            )
        options.append((key.strip(), value.strip()))
    return DeviceRequest(raw, ONNXRUNTIME, target=name, options=tuple(options))


def _ov_name(raw: str, name: str) -> str:
    name = name.strip()
    if not _OV_NAME.match(name):
        raise DeviceRequestError(
            f"bad OpenVINO device name {name!r} in {raw!r}: expected a name like CPU, GPU.0, NPU",
            backend=OPENVINO,
            device=raw,
        )
    return name.upper()


def select(
    requests: str | Sequence[str] | Sequence[DeviceRequest],
    devices: Sequence[Device],
    model_format: str,
) -> Selection:
    """Order the devices to try for a model of ``model_format``, and say why others were left out.

    Pure: reads only its arguments. ``requests`` is one request or a list tried in
    order; duplicates are tried once.
    """
    parsed = _as_requests(requests)
    readers = READERS[model_format]
    candidates: list[Candidate] = []
    passed: list[PassedOver] = []
    for req in parsed:
        for item in _expand(req, devices, readers, model_format):
            if isinstance(item, PassedOver):
                passed.append(item)
            elif all(c.device.request != item.device.request for c in candidates):
                candidates.append(item)
    return Selection(tuple(candidates), tuple(passed))


def _as_requests(requests: str | Sequence[str] | Sequence[DeviceRequest]) -> list[DeviceRequest]:
    items: Iterable[str | DeviceRequest] = [requests] if isinstance(requests, str) else requests
    parsed = [r if isinstance(r, DeviceRequest) else parse_request(r) for r in items]
    if not parsed:
        raise DeviceRequestError("empty device request list")
    return parsed


def _expand(
    req: DeviceRequest, devices: Sequence[Device], readers: tuple[str, ...], model_format: str
) -> list[Candidate | PassedOver]:
    if req.backend is None:
        return _expand_kind(req, devices, readers, model_format)
    if req.backend not in readers:
        return [PassedOver(req.text, req.text, f"{req.backend} cannot read {model_format} models")]
    broken = next((d for d in devices if d.backend == req.backend and not d.name and not d.available), None)
    if broken is not None:
        return [PassedOver(req.text, req.text, broken.reason)]
    if req.backend == LITERT:
        return [_match_litert(req, devices)]
    if req.backend == ONNXRUNTIME:
        return [_match_onnxruntime(req, devices)]
    return [_match_openvino(req, devices)]


def _expand_kind(
    req: DeviceRequest, devices: Sequence[Device], readers: tuple[str, ...], model_format: str
) -> list[Candidate | PassedOver]:
    out: list[Candidate | PassedOver] = []
    ranked: list[tuple[int, int, int, Device]] = []
    for i, dev in enumerate(devices):
        label = dev.request if dev.name else dev.backend
        if req.kind is not None and dev.kind != req.kind:
            continue  # not asked for: not "passed over"
        if dev.backend not in readers:
            out.append(PassedOver(req.text, label, f"{dev.backend} cannot read {model_format} models"))
        elif not dev.available:
            out.append(PassedOver(req.text, label, dev.reason or "unavailable"))
        elif req.is_auto and dev.kind not in AUTO_RANK:
            out.append(PassedOver(req.text, label, f"auto never picks a {dev.kind} device: request it by name"))
        elif req.is_auto and dev.int8 is False:
            out.append(
                PassedOver(
                    req.text, label, "no int8 support (it would run an int8 model in floating point): name it to use it"
                )
            )
        else:
            ranked.append((AUTO_RANK.get(dev.kind, 9), readers.index(dev.backend), i, dev))
    ranked.sort(key=lambda t: t[:3])
    why = "auto: npu/tpu, then gpu, then cpu" if req.is_auto else f"kind {req.kind}"
    out.extend(Candidate(dev, req.text, f"{why} ({dev.kind})") for *_, dev in ranked)
    if req.kind is not None and not ranked and not out:
        out.append(PassedOver(req.text, req.text, f"no {req.kind} device found"))
    return out


def _match_litert(req: DeviceRequest, devices: Sequence[Device]) -> Candidate | PassedOver:
    if req.target == "delegate":
        lib = dict(req.options)["library"]
        spec = req.text.strip().partition(":")[2]  # delegate=PATH;k=v: the name keeps the options
        dev = Device(LITERT, spec, "other", f"external delegate {lib}", options=req.options)
        return Candidate(dev, req.text, "named by request; the library is loaded and checked at load time")
    found = next((d for d in devices if d.backend == LITERT and d.name == req.target), None)
    if found is None:
        return PassedOver(req.text, req.text, f"not found ({_found_list(devices, LITERT)})")
    if not found.available:
        return PassedOver(req.text, found.request, found.reason or "unavailable")
    if req.options:
        found = _with_options(found, found.name + ":" + dict(req.options)["device"], req.options)
    return Candidate(found, req.text, "named by request")


def _match_onnxruntime(req: DeviceRequest, devices: Sequence[Device]) -> Candidate | PassedOver:
    """The provider a request names (short or full name, any case), with its options added."""
    wanted = (req.target or "").lower()
    found = next(
        (
            d
            for d in devices
            if d.backend == ONNXRUNTIME
            and d.name
            and wanted in (d.name.lower(), dict(d.options).get("provider", "").lower())
        ),
        None,
    )
    if found is None:
        # the provider table, only for this message: kept off `import edge_runtime`
        from .backends.onnxruntime_providers import INSTALL_HINTS, REMOTE, full_name

        provider = full_name(req.target or "")
        if provider in REMOTE:
            return PassedOver(req.text, req.text, REMOTE[provider])
        hint = f"; {INSTALL_HINTS[provider]}" if provider in INSTALL_HINTS else ""
        what = f"{provider} is not in this ONNX Runtime build" if provider else "not found"
        return PassedOver(req.text, req.text, f"{what} ({_found_list(devices, ONNXRUNTIME)}){hint}")
    if not found.available:
        return PassedOver(req.text, found.request, found.reason or "unavailable")
    if req.options:
        suffix = ";".join(f"{k}={v}" for k, v in req.options)
        found = _with_options(found, f"{found.name};{suffix}", req.options)
    return Candidate(found, req.text, "named by request")


def _with_options(device: Device, name: str, options: tuple[tuple[str, str], ...]) -> Device:
    """``device`` under the name that selects it with ``options`` (``edgetpu:usb:0``,
    ``CUDA;device_id=1``), the request's options added to its own."""
    return replace(device, name=name, options=device.options + options)


def _match_openvino(req: DeviceRequest, devices: Sequence[Device]) -> Candidate | PassedOver:
    ov = [d for d in devices if d.backend == OPENVINO and d.name]
    target = req.target or ""
    meta = target.split(":")[0] if ":" in target else None
    if meta is None and target not in OPENVINO_META:
        found = _find_ov(ov, target)
        if found is None:
            return PassedOver(req.text, req.text, f"not found ({_found_list(devices, OPENVINO)})")
        if not found.available:
            return PassedOver(req.text, found.request, found.reason or "unavailable")
        return Candidate(found, req.text, "named by request")
    members = req.members or tuple(d.name for d in ov if d.available)
    present = [m for m in members if (d := _find_ov(ov, m)) is not None and d.available]
    missing = [m for m in members if m not in present]
    if meta == "HETERO" and missing:
        return PassedOver(req.text, req.text, f"HETERO needs every listed device; missing: {', '.join(missing)}")
    if not present:
        return PassedOver(req.text, req.text, f"none of {', '.join(members) or 'its devices'} found")
    kinds = [openvino_kind(m) for m in present]
    # HETERO runs on its devices in the order given; AUTO/MULTI lean on the best one.
    kind = kinds[0] if meta == "HETERO" else min(kinds, key=lambda k: AUTO_RANK.get(k, 9))
    member_devs = [d for m in present if (d := _find_ov(ov, m)) is not None]
    int8 = any(d.int8 for d in member_devs) if member_devs else None
    # AUTO/MULTI compile over the members that are there: OpenVINO fails the whole compile when a
    # listed device's plugin cannot load (a GPU plugin without OpenCL), rather than skipping it.
    name = f"{meta or target}:{','.join(present)}" if meta in (None, "AUTO", "MULTI") and missing else target
    dev = Device(OPENVINO, name, kind, f"{name.split(':')[0]} over {', '.join(present)}", int8)
    note = f"; not found: {', '.join(missing)} (left out)" if missing else ""
    return Candidate(dev, req.text, f"named by request{note}")


def _find_ov(ov: Sequence[Device], name: str) -> Device | None:
    exact = next((d for d in ov if d.name == name), None)
    if exact is not None:
        return exact
    # OpenVINO accepts "GPU" for the first of GPU.0, GPU.1, ...
    return next((d for d in ov if d.name.split(".")[0] == name), None)


def _found_list(devices: Sequence[Device], backend: str) -> str:
    names = [d.name for d in devices if d.backend == backend and d.name]
    return f"{backend} found: {', '.join(names)}" if names else f"{backend} found no devices"


def probe(
    backends: Sequence[str] | None = None,
    *,
    openvino_plugins: dict[str, str] | None = None,
    requests: Sequence[DeviceRequest] | None = None,
) -> list[Device]:
    """Find the devices of ``backends`` (default: all registered), touching hardware.

    ``requests``: probe only what these need. A request naming a device (``litert:cpu``,
    ``openvino:CPU``) looks at that device alone; ``auto`` and kind requests look at every
    device of the backends. A backend that cannot be imported gives one unavailable record
    with the reason. ``openvino_plugins`` maps a device name to a plugin library (or names
    a ``plugins.xml`` under the key ``"xml"``); see ``backends.openvino.probe_devices``.
    Native code that could crash runs in a child process, once per process and only where its
    library is there: the Edge TPU listing (``libedgetpu.so.1`` found) and LiteRT's GPU trial
    compile (a Vulkan or OpenCL driver found; not for plain ``auto``). Nothing else is spawned.
    """
    found: list[Device] = []
    for name in backends or tuple(REGISTRY):
        try:
            module = get_backend(name)
        except BackendUnavailableError as exc:
            found.append(Device(name, "", "other", f"{name} (not importable)", available=False, reason=exc.reason))
            continue
        names = needed_devices(name, requests)
        if name == OPENVINO:
            found.extend(module.probe_devices(plugins=openvino_plugins, names=names))
        elif name == LITERT:
            # Plain ``auto`` never picks LiteRT's GPU accelerator (no int8 kernels): no trial
            # compile in a child process for it on that path.
            auto_only = requests is not None and all(r.is_auto for r in requests)
            found.extend(module.probe_devices(names=names, gpu_trial=not auto_only))
        else:
            found.extend(module.probe_devices(names=names))
    return found


def needed_devices(backend: str, requests: Sequence[DeviceRequest] | None) -> tuple[str, ...] | None:
    """The device names of ``backend`` that ``requests`` can select (None: all of them).

    Pure. LiteRT names are delegate names (its CPU is always listed); OpenVINO names are
    device names, the members of ``AUTO:``/``MULTI:``/``HETERO:`` requests included.
    """
    if requests is None or any(r.backend is None for r in requests):
        return None
    names: list[str] = []
    for r in requests:
        if r.backend != backend:
            continue
        if backend == OPENVINO:
            target = r.target or ""
            if target in OPENVINO_META:  # bare AUTO / MULTI: over every device
                return None
            for n in r.members or (target,):
                if n not in names:
                    names.append(n)
        elif backend == ONNXRUNTIME:
            # every provider: listing them touches no hardware beyond cuDeviceGetCount, and a
            # mistyped name is then answered with the providers there are
            return None
        elif r.target not in ("cpu", "delegate") and r.target is not None and r.target not in names:
            names.append(r.target)
    return tuple(names)


def devices(*, openvino_plugins: dict[str, str] | None = None) -> list[Device]:
    """Every accelerator the installed backends can find, available or not, with reasons."""
    return probe(openvino_plugins=openvino_plugins)
