#!/usr/bin/env python3
"""Build ``models/digits_cnn_int8.onnx`` from ``models/digits_cnn_int8.tflite`` and document it.

The ONNX file is produced by ``scripts/tflite_to_onnx.py`` (int8 QDQ, the TFLite quantization
kept exactly, same int8 NHWC input and int8 output), so it shares the ``digits_cnn_int8.json``
sidecar by stem. The script then measures, on the held-out split ``models/digits_cnn_int8_test.npz``
(450 windows), the accuracy of the ONNX model in ONNX Runtime (CPU execution provider) and in
OpenVINO's CPU plugin (default configuration), and of the ``.tflite`` in the LiteRT interpreter,
and their argmax agreement and largest output difference against LiteRT, prints them, and writes
the section ``## `digits_cnn_int8.onnx``` of ``models/README.md`` (replacing it if present).

Usage::

    python scripts/build_onnx_model.py [--date YYYY-MM-DD] [--no-readme]

Needs ``onnx``, ``onnxruntime`` and ``openvino`` (``pip install onnx onnxruntime openvino``); no
TensorFlow.
"""

from __future__ import annotations

import argparse
import datetime
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
try:
    import tflite_to_onnx
except ImportError as exc:  # run without its tools: one line, not a traceback
    sys.exit(f"build_onnx_model.py: {exc}: it needs onnx, onnxruntime, openvino and ai-edge-litert")

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
STEM = "digits_cnn_int8"
HEADING = f"## `{STEM}.onnx`"


@dataclass(frozen=True)
class Evaluation:
    """Held-out results of the ONNX model (ONNX Runtime CPU, OpenVINO CPU) and of the .tflite (LiteRT)."""

    samples: int
    onnx_correct: int
    litert_correct: int
    argmax_agree: int
    max_step_diff: int
    onnxruntime_version: str
    litert_version: str
    openvino_correct: int
    openvino_argmax_agree: int
    openvino_max_step_diff: int
    openvino_version: str
    openvino_convolutions: int  # Convolution nodes in OpenVINO's compiled model
    openvino_int8_convolutions: int  # ... of which run in u8 / i8


def quantize(x: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """``q = clip(rint(x / scale) + zero_point, -128, 127)`` in float32, as int8."""
    q = np.rint(x.astype(np.float32) / np.float32(scale)) + np.float32(zero_point)
    result: np.ndarray = np.clip(q, -128, 127).astype(np.int8)
    return result


def evaluate(tflite: Path, onnx_path: Path, test_npz: Path) -> Evaluation:
    """Run every test sample (one per call) through LiteRT, ONNX Runtime and OpenVINO and compare."""
    import ai_edge_litert
    import onnxruntime as ort  # type: ignore[import-untyped]
    import openvino as ov
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(tflite))
    interpreter.allocate_tensors()
    inp: dict[str, Any] = interpreter.get_input_details()[0]
    out: dict[str, Any] = interpreter.get_output_details()[0]
    scale, zero_point = inp["quantization"]
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    compiled = ov.Core().compile_model(str(onnx_path), "CPU")
    request = compiled.create_infer_request()
    conv_precisions = [
        str(op.get_rt_info()["runtimePrecision"].astype(str))
        for op in compiled.get_runtime_model().get_ordered_ops()
        if op.get_rt_info()["layerType"].astype(str) == "Convolution"
    ]

    data = np.load(test_npz)
    x = quantize(data["x"], scale, zero_point)
    y = data["y"].astype(np.int64)
    onnx_correct = litert_correct = agree = max_diff = 0
    ov_correct = ov_agree = ov_max_diff = 0
    for sample, label in zip(x, y):
        batch = sample[None]
        interpreter.set_tensor(inp["index"], batch)
        interpreter.invoke()
        lite = interpreter.get_tensor(out["index"]).astype(np.int64)
        ox = session.run(None, {input_name: batch})[0].astype(np.int64)
        max_diff = max(max_diff, int(np.abs(lite - ox).max()))
        onnx_correct += int(ox.argmax() == label)
        litert_correct += int(lite.argmax() == label)
        agree += int(ox.argmax() == lite.argmax())
        vx = np.asarray(request.infer({0: batch})[0]).astype(np.int64)
        ov_max_diff = max(ov_max_diff, int(np.abs(lite - vx).max()))
        ov_correct += int(vx.argmax() == label)
        ov_agree += int(vx.argmax() == lite.argmax())
    return Evaluation(
        samples=len(y),
        onnx_correct=onnx_correct,
        litert_correct=litert_correct,
        argmax_agree=agree,
        max_step_diff=max_diff,
        onnxruntime_version=str(ort.__version__),
        litert_version=str(getattr(ai_edge_litert, "__version__", "unknown")),
        openvino_correct=ov_correct,
        openvino_argmax_agree=ov_agree,
        openvino_max_step_diff=ov_max_diff,
        openvino_version=str(ov.__version__).split("-", 1)[0],
        openvino_convolutions=len(conv_precisions),
        openvino_int8_convolutions=sum(p in ("u8", "i8") for p in conv_precisions),
    )


def _pct(n: int, total: int) -> str:
    return f"{100.0 * n / total:.2f} %"


def readme_section(ev: Evaluation, size: int, date: str) -> str:
    """The Markdown section documenting the ONNX model (ends with a newline)."""
    ort_column = f"ONNX Runtime {ev.onnxruntime_version} CPU, `.onnx`"
    litert_column = f"LiteRT {ev.litert_version}, `.tflite`"
    ov_column = f"OpenVINO {ev.openvino_version} CPU, `.onnx`"
    return f"""{HEADING}

Built on {date} by `scripts/build_onnx_model.py` from `{STEM}.tflite` through the converter
`scripts/tflite_to_onnx.py` (no TensorFlow; the `.tflite` flatbuffer is read directly). It is
the same network in ONNX QDQ form: every TFLite operator is `DequantizeLinear` ->
float op -> `QuantizeLinear` with the `.tflite` tensors' own scales and zero points
(per-channel int8 weights, int32 biases with scale = input scale x weight scale). Input
`[1, 8, 8, 1]` int8 NHWC (scale 0.00392157, zero point -128) and output `[1, 10]` int8
(scale 0.00390625, zero point -128) are those of the `.tflite`, so it shares the
`{STEM}.json` sidecar (labels, preprocessing) by stem. Inside the graph the activations are
carried as uint8 with the same scales and zero point + 128 (the same real values), because
OpenVINO's CPU plugin has no convolution for int8 activations with a non-zero zero point; so
carried, OpenVINO compiles it and runs {ev.openvino_int8_convolutions} of its {ev.openvino_convolutions} convolutions
in int8 (uint8 activations x int8 weights). ONNX opset {tflite_to_onnx.OPSET}, {size} bytes;
the file is byte-identical to a fresh conversion (checked by `tests/test_tflite_to_onnx.py`).
Rebuild in a development virtual environment (not beside `onnxruntime-gpu`: both are the
module `onnxruntime`):

```sh
pip install onnx onnxruntime openvino && python scripts/build_onnx_model.py
```

| held-out split (`{STEM}_test.npz`) | {ort_column} | {ov_column} | {litert_column} |
| --- | --- | --- | --- |
| accuracy on {ev.samples} test windows | {_pct(ev.onnx_correct, ev.samples)} \
| {_pct(ev.openvino_correct, ev.samples)} | {_pct(ev.litert_correct, ev.samples)} |
| argmax agreement with LiteRT | {ev.argmax_agree} / {ev.samples} | {ev.openvino_argmax_agree} / {ev.samples} | |
| largest output difference from LiteRT | {ev.max_step_diff} quantization steps \
| {ev.openvino_max_step_diff} quantization steps | |

OpenVINO was run with its default CPU configuration (`compile_model(path, "CPU")`); on CPUs
with bfloat16 support that makes the float glue between the int8 kernels bfloat16, which can
move outputs by a few steps on other models, though not here.
"""


def update_readme(readme: Path, section: str) -> None:
    """Replace the section under :data:`HEADING` (up to the next ``## `` heading) or append it."""
    text = readme.read_text() if readme.exists() else ""
    pattern = re.compile(rf"^{re.escape(HEADING)}\n.*?(?=^## |\Z)", re.M | re.S)
    match = pattern.search(text)
    if match is not None:
        rest = text[match.end() :]
        text = text[: match.start()] + section + ("\n" + rest if rest else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    readme.write_text(text)


def main(argv: list[str] | None = None) -> int:
    """Build the ONNX model, print its accuracy, and update ``models/README.md``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0] if __doc__ else None)
    parser.add_argument("--date", default=datetime.date.today().isoformat(), help="build date for the README")
    parser.add_argument("--no-readme", action="store_true", help="do not touch models/README.md")
    parser.add_argument("--models-dir", type=Path, default=MODELS, help="where the model files are (default: models/)")
    args = parser.parse_args(argv)

    models: Path = args.models_dir
    tflite = models / f"{STEM}.tflite"
    onnx_path = models / f"{STEM}.onnx"
    try:
        tflite_to_onnx.convert_file(tflite, onnx_path)
    except (tflite_to_onnx.ConversionError, OSError) as exc:
        print(f"build_onnx_model: error: {exc}", file=sys.stderr)
        return 2
    size = onnx_path.stat().st_size
    ev = evaluate(tflite, onnx_path, models / f"{STEM}_test.npz")
    print(f"wrote {onnx_path} ({size} bytes, opset {tflite_to_onnx.OPSET})")
    print(
        f"accuracy on {ev.samples} held-out samples: ONNX Runtime {ev.onnxruntime_version} CPU "
        f"{_pct(ev.onnx_correct, ev.samples)}, LiteRT {ev.litert_version} {_pct(ev.litert_correct, ev.samples)}; "
        f"argmax agreement {ev.argmax_agree}/{ev.samples}, max output difference {ev.max_step_diff} steps; "
        f"OpenVINO {ev.openvino_version} CPU {_pct(ev.openvino_correct, ev.samples)}, "
        f"argmax agreement {ev.openvino_argmax_agree}/{ev.samples}, "
        f"max output difference {ev.openvino_max_step_diff} steps, "
        f"{ev.openvino_int8_convolutions}/{ev.openvino_convolutions} convolutions in int8"
    )
    if not args.no_readme:
        update_readme(models / "README.md", readme_section(ev, size, args.date))
        print(f"updated {models / 'README.md'} section {HEADING}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
