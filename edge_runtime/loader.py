"""``load()``: the one door for a model file or an early-exit bundle.

Loading a file (``model.load_model``) and loading a bundle (``early_exit.load_bundle``)
meet here and nowhere else, so ``model.py`` never imports ``early_exit.py`` (the bundle
is built from models, not the other way round). The bundle modules are imported only when
a directory is loaded, which keeps ``import edge_runtime`` and a plain model's load light.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from .backends.isolation_policy import Isolation
from .device_info import Device
from .errors import ArgumentError
from .model import TrustedKeys, check_batch, load_model, merge_threads
from .runner import Runner


def load(
    path: str | Path,
    device: str | Sequence[str] = "auto",
    *,
    threads: int | Literal["auto"] | None = None,
    performance_hint: str | None = "LATENCY",
    cache_dir: str | Path | None = None,
    openvino_config: dict[str, Any] | None = None,
    openvino_plugins: dict[str, str] | None = None,
    devices: Sequence[Device] | None = None,
    labels: Sequence[str] | None = None,
    num_threads: int | None = None,
    isolate: bool | Isolation = False,
    trusted_keys: TrustedKeys | None = None,
    measure_cache: str | Path | None = None,
    batch: int = 1,
    measure_data: Any = None,
) -> Runner:
    """Load a model file or an early-exit bundle on the best requested device; return a ``Runner``.

    ``path``: a ``.tflite``, an OpenVINO IR ``.xml`` (with its ``.bin``) or an ``.onnx`` file
    (a ``Model``), or a directory holding ``bundle.json`` (an ``EarlyExitModel``). Use
    ``load_model`` / ``load_bundle`` where a type checker should see the concrete class.

    ``device``: one request or a list tried in order (grammar: ``edge_runtime.devices``).
    ``auto:measure`` times every candidate device and thread count (about a second for a small
    model, once: the decision is cached) and loads on the fastest; plain ``auto`` takes such a
    cached decision when there is one (``edge_runtime.measure``).
    ``threads``: CPU threads for inference (None: the backend's default; ``num_threads`` is
    the older spelling of the same option, still accepted). ``"auto"``: time thread counts
    (1, 2, the cores) on the first candidate device and use the fastest (cached as above).
    ``batch``: samples per call (a model file only): the first dimension of every input and
    output becomes ``batch`` (LiteRT ``resize_tensor_input``, OpenVINO ``reshape``);
    ``ModelLoadError`` when the model cannot carry a batch through (a reshape hard-coding 1).
    To batch single windows from several streams, see ``edge_runtime.batching.DynamicBatcher``.
    ``measure_data``: for an early-exit bundle with ``...:measure`` or ``threads="auto"``:
    representative windows (an array, first dimension the window count); each setting is
    timed by ``classify`` over them (early exits as on that data) instead of every stage once
    (``edge_runtime.measure_bundle``).
    ``measure_cache``: the directory of the measurement cache (default
    ``$XDG_CACHE_HOME/edge_runtime``; a daemon passes its state directory).
    ``performance_hint``, ``cache_dir``, ``openvino_config``: OpenVINO compile options.
    ``openvino_plugins``: extra OpenVINO plugins, device name -> library path.
    ``devices``: the device table to select from (default: probed now, only what the request needs).
    ``labels``: class names (default: the model's JSON sidecar, or the bundle's manifest).
    ``isolate``: run the model in a child process (True, or an ``Isolation`` policy), so a
    native crash or hang in the interpreter kills only the child: it raises
    ``ModelCrashError`` here and the child is restarted; see ``edge_runtime.backends.isolated``.
    ``trusted_keys``: public key files (``.pub``) or ``Ed25519PublicKey`` objects. Given, the
    model or bundle must be a release signed by one of them (``edge-runtime sign``): its signed
    manifest is verified (``edge_runtime.manifest.verify``: signature, every file's sha256 and
    size, no file missing or unlisted) before any backend sees a byte, and the bytes then read
    are compared with the manifest again, so a file replaced after the check is refused too.
    The runner's ``release`` is the verified manifest (None without keys). ``manifest`` and the
    ``cryptography`` package are imported only when keys are given. An empty list is an error,
    not "no check".

    Raises ``ModelFileError`` for a bad file or directory, ``DeviceRequestError`` for a
    request that does not parse, ``ArgumentError`` for a bad option value,
    ``DeviceUnavailableError`` when no requested device is there, and ``ModelLoadError``
    when every candidate failed to load (each reason listed). With ``trusted_keys``:
    ``SignatureError`` (a ``ModelFileError``, so no other device is tried) for an unsigned,
    wrongly signed, tampered or mixed model or bundle, ``VersionError`` for a release that needs
    a newer edge_runtime, ``ArgumentError`` for a bad key file or a missing ``cryptography``.
    """
    if threads != "auto":
        threads = merge_threads(threads, num_threads)
    elif num_threads is not None:
        raise ArgumentError(f"threads='auto' and num_threads={num_threads!r} disagree: pass only threads")
    options: dict[str, Any] = {
        "threads": threads,
        "performance_hint": performance_hint,
        "cache_dir": cache_dir,
        "openvino_config": openvino_config,
        "openvino_plugins": openvino_plugins,
        "devices": devices,
        "labels": labels,
        "isolate": isolate,
    }
    if trusted_keys is not None:
        options["trusted_keys"] = trusted_keys
    if measure_cache is not None:
        options["measure_cache"] = measure_cache
    check_batch(batch)
    if batch != 1:
        options["batch"] = batch
    if Path(path).is_dir():
        from .bundle import MANIFEST  # imported when a directory is loaded: a plain model never needs them

        if (Path(path) / MANIFEST).is_file():
            from .early_exit import load_bundle

            if measure_data is not None:
                options["measure_data"] = measure_data
            return load_bundle(path, device, **options)
    if measure_data is not None:
        raise ArgumentError(
            "measure_data is for early-exit bundles (a model's cost does not depend on its input)", path=str(path)
        )
    return load_model(path, device, **options)
