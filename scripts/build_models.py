#!/usr/bin/env python3
"""Train and export the full-integer int8 TFLite models shipped in ``models/``.

Models
------
* ``digits_cnn_int8``: small 2D CNN on scikit-learn's bundled ``load_digits``
  (8x8 grayscale handwritten digits, 10 classes), stratified 75/25 split.
* ``basicmotions_int8``: small 1D CNN on aeon's bundled BasicMotions data set
  (smart-watch IMU: accelerometer xyz + gyroscope xyz, 100 samples at 10 Hz,
  4 activities), using aeon's own TRAIN/TEST split.

For every model the script writes, into ``--out-dir``:

* ``<name>.tflite``: int8 input, int8 output, only TFLITE_BUILTINS_INT8 ops,
  calibrated with a representative data set drawn from the training split;
* ``<name>.json``: sidecar with labels, input layout, preprocessing constants,
  quantization parameters, float and int8 held-out accuracy and provenance;
* ``<name>_test.npz``: the held-out split (``x`` float32 after preprocessing,
  in the model's input layout, before quantization; ``y`` int64 labels);

plus ``README.md`` (summary table) in ``--out-dir`` and the test fixture
``custom_op.tflite`` in ``--fixtures-dir``: a copy of the digits model in which
one operator code is rewritten into the unresolvable custom op
``EdgeRuntimeTestOnlyOp``.

No data is downloaded: both data sets ship inside the installed packages.
All randomness is derived from ``--seed``; with the pinned versions in
``scripts/requirements-train.txt`` a rebuild is expected to reproduce the
same files on the same kind of CPU.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

# Quieter TensorFlow and no oneDNN graph rewrites (keeps float results closer
# across CPUs). Must be set before TensorFlow is imported (done lazily below).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import numpy as np
from train_common import (
    FloatArray,
    IntArray,
    count_macs,
    iso_date,
    pct,
    quantize_input,
    save_npz_deterministic,
    seed_everything,
    sha256_file,
    version,
)

if TYPE_CHECKING:
    import keras

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT_DIR = REPO_ROOT / "models"
# The demo's model and sidecar are package data (edge-runtime demo runs from any directory): with the
# default --out-dir they are written there, and models/ keeps a relative symlink to each.
PACKAGE_DATA_DIR = REPO_ROOT / "edge_runtime" / "data"
PACKAGED_MODELS = frozenset({"basicmotions_int8"})
DEFAULT_FIXTURES_DIR = REPO_ROOT / "tests" / "data"
DEFAULT_SEED = 20261121
DEFAULT_DATE = "2026-11-21"
BASE_REBUILD_COMMAND = "pip install -r scripts/requirements-train.txt && python scripts/build_models.py"
MAX_TEST_NPZ_BYTES = 300_000
CUSTOM_OP_NAME = "EdgeRuntimeTestOnlyOp"
CUSTOM_OP_FIXTURE = "custom_op.tflite"
TFLITE_FILE_IDENTIFIER = b"TFL3"
# Fixed timestamp for the .npz zip entries so that rebuilds are byte-identical.


# --------------------------------------------------------------------------
# Data sets
# --------------------------------------------------------------------------


@dataclass
class Dataset:
    """A prepared data set: preprocessed float32 inputs in model layout."""

    x_train: FloatArray
    y_train: IntArray
    x_test: FloatArray
    y_test: IntArray
    labels: list[str]
    preprocessing: dict[str, Any]
    input_layout: str
    data_source: dict[str, Any]
    split: str


def load_digits_dataset(seed: int) -> Dataset:
    """scikit-learn digits, pixel / 16.0, [N, 8, 8, 1], stratified 25 % test."""
    import sklearn.datasets
    from sklearn.model_selection import train_test_split

    digits = sklearn.datasets.load_digits()
    images = digits.images.astype(np.float32)  # (1797, 8, 8), values 0..16
    x = (images / np.float32(16.0))[..., np.newaxis]  # NHWC, [0, 1]
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, stratify=y, random_state=seed)
    data_file = Path(sklearn.datasets.__file__).parent / "data" / "digits.csv.gz"
    return Dataset(
        x_train=np.ascontiguousarray(x_train, dtype=np.float32),
        y_train=y_train.astype(np.int64),
        x_test=np.ascontiguousarray(x_test, dtype=np.float32),
        y_test=y_test.astype(np.int64),
        labels=[str(int(t)) for t in digits.target_names],
        preprocessing={
            "kind": "scale",
            "formula": "x = pixel / 16.0",
            "divisor": 16.0,
            "raw_range": [0.0, 16.0],
            "output_range": [0.0, 1.0],
            "dtype": "float32",
        },
        input_layout=(
            "NHWC [batch=1, height=8, width=8, channels=1]: one 8x8 grayscale image, row-major, raw pixel values 0..16"
        ),
        data_source={
            "package": "scikit-learn",
            "package_version": version("scikit-learn"),
            "dataset": "sklearn.datasets.load_digits",
            "dataset_version": (
                "UCI ML optical recognition of handwritten digits (test part), "
                f"as bundled with scikit-learn {version('scikit-learn')}"
            ),
            "files_sha256": {data_file.name: sha256_file(data_file)},
            "num_samples_total": len(y),
        },
        split=(f"sklearn.model_selection.train_test_split(test_size=0.25, stratify=y, random_state={seed})"),
    )


BASICMOTIONS_CHANNELS = ["accel_x", "accel_y", "accel_z", "gyro_x", "gyro_y", "gyro_z"]


def load_basicmotions_dataset() -> Dataset:
    """aeon BasicMotions, [N, 100, 6], per-channel z-score from TRAIN stats."""
    try:
        import aeon
        from aeon.datasets import load_basic_motions
    except ImportError as exc:  # pragma: no cover - reported to the user
        raise SystemExit(
            "aeon is required for the BasicMotions model: pip install -r scripts/requirements-train.txt"
        ) from exc

    # Bundled data (aeon/datasets/data/BasicMotions/*.ts): no network access.
    x_train_raw, y_train_str = load_basic_motions(split="train")
    x_test_raw, y_test_str = load_basic_motions(split="test")
    # aeon returns (cases, channels, time); the sensor stream layout is (time, channels).
    x_train_tc = np.transpose(x_train_raw, (0, 2, 1)).astype(np.float32)
    x_test_tc = np.transpose(x_test_raw, (0, 2, 1)).astype(np.float32)

    labels = sorted({str(s) for s in y_train_str})
    index = {name: i for i, name in enumerate(labels)}
    y_train = np.array([index[str(s)] for s in y_train_str], dtype=np.int64)
    y_test = np.array([index[str(s)] for s in y_test_str], dtype=np.int64)

    # Statistics in float64 over the training split only, then rounded to
    # float32 so that float(mean) in the JSON reproduces them bit-exactly.
    mean = x_train_tc.astype(np.float64).mean(axis=(0, 1)).astype(np.float32)
    std = x_train_tc.astype(np.float64).std(axis=(0, 1)).astype(np.float32)

    def normalise(a: FloatArray) -> FloatArray:
        return np.ascontiguousarray((a - mean) / std, dtype=np.float32)

    data_dir = Path(aeon.__file__).parent / "datasets" / "data" / "BasicMotions"
    files = ["BasicMotions_TRAIN.ts", "BasicMotions_TEST.ts"]
    return Dataset(
        x_train=normalise(x_train_tc),
        y_train=y_train,
        x_test=normalise(x_test_tc),
        y_test=y_test,
        labels=labels,
        preprocessing={
            "kind": "standardize_per_channel",
            "formula": "x[t, c] = (raw[t, c] - mean[c]) / std[c]",
            "channels": BASICMOTIONS_CHANNELS,
            "mean": [float(v) for v in mean],
            "std": [float(v) for v in std],
            "statistics": "computed on the training split; population std (ddof=0)",
            "dtype": "float32",
        },
        input_layout=(
            "[batch=1, time=100, channels=6]: 10 s window sampled at 10 Hz, "
            "channels accel_x, accel_y, accel_z, gyro_x, gyro_y, gyro_z "
            "(dataset dimensions 0..5), time-major as a sensor stream produces it"
        ),
        data_source={
            "package": "aeon",
            "package_version": version("aeon"),
            "dataset": "BasicMotions (aeon.datasets.load_basic_motions)",
            "dataset_version": (
                f"UEA multivariate time series classification archive, as bundled with aeon {version('aeon')}"
            ),
            "files_sha256": {f: sha256_file(data_dir / f) for f in files},
            "num_samples_total": int(len(y_train) + len(y_test)),
        },
        split="aeon's own split: train = TRAIN file, held-out test = TEST file",
    )


# --------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------


@dataclass
class ModelSpec:
    """How to load, build and train one model."""

    name: str
    task: str
    load: Callable[[int], Dataset]
    build: Callable[[tuple[int, ...], int], keras.Model]
    input_name: str
    epochs: int
    batch_size: int
    learning_rate: float
    architecture: str


def build_digits_cnn(input_shape: tuple[int, ...], num_classes: int) -> keras.Model:
    import keras
    from keras import layers

    inputs = keras.Input(shape=input_shape, name="pixels")
    x = layers.Conv2D(16, 3, padding="same", activation="relu")(inputs)
    x = layers.Conv2D(32, 3, padding="same", activation="relu")(x)
    x = layers.MaxPooling2D(2)(x)  # 4x4x32
    x = layers.Conv2D(32, 3, padding="same", activation="relu")(x)
    x = layers.Flatten()(x)  # 512
    x = layers.Dense(64, activation="relu")(x)
    x = layers.Dropout(0.2)(x)
    x = layers.Dense(num_classes)(x)
    outputs = layers.Softmax(name="probabilities")(x)
    return keras.Model(inputs, outputs, name="digits_cnn")


def build_basicmotions_cnn(input_shape: tuple[int, ...], num_classes: int) -> keras.Model:
    import keras
    from keras import layers

    # Fully convolutional network in the style of Wang et al. (2017), "Time
    # series classification from scratch": no pooling until the global average,
    # so every layer sees all 100 time steps (~12.5 M MACs, ~126 k weights).
    inputs = keras.Input(shape=input_shape, name="imu")
    x = layers.Conv1D(64, 7, padding="same", activation="relu")(inputs)
    x = layers.Conv1D(96, 5, padding="same", activation="relu")(x)
    x = layers.Conv1D(96, 5, padding="same", activation="relu")(x)
    x = layers.Conv1D(96, 5, padding="same", activation="relu")(x)
    x = layers.GlobalAveragePooling1D()(x)
    x = layers.Dense(num_classes)(x)
    outputs = layers.Softmax(name="probabilities")(x)
    return keras.Model(inputs, outputs, name="basicmotions_cnn")


MODEL_SPECS: dict[str, ModelSpec] = {
    "digits_cnn_int8": ModelSpec(
        name="digits_cnn_int8",
        task="image classification: handwritten digit 0-9 from an 8x8 image",
        load=load_digits_dataset,
        build=build_digits_cnn,
        input_name="pixels",
        epochs=40,
        batch_size=32,
        learning_rate=1e-3,
        architecture=(
            "Conv2D(16,3x3)-Conv2D(32,3x3)-MaxPool(2)-Conv2D(32,3x3)-Dense(64)-Dense(10)-Softmax, ReLU, 'same' padding"
        ),
    ),
    "basicmotions_int8": ModelSpec(
        name="basicmotions_int8",
        task="human activity recognition from a 10 s smart-watch IMU window",
        load=lambda _seed: load_basicmotions_dataset(),
        build=build_basicmotions_cnn,
        input_name="imu",
        epochs=150,
        batch_size=8,
        learning_rate=2e-3,
        architecture=(
            "Conv1D(64,k7)-Conv1D(96,k5)-Conv1D(96,k5)-Conv1D(96,k5)-"
            "GlobalAvgPool-Dense(4)-Softmax, ReLU, 'same' padding"
        ),
    ),
}
# Build order: digits first (the custom-op fixture is derived from it).
MODEL_KEYS = {"digits": "digits_cnn_int8", "basicmotions": "basicmotions_int8"}


def train_model(spec: ModelSpec, data: Dataset, seed: int) -> keras.Model:
    import keras

    seed_everything(seed)
    model = spec.build(tuple(data.x_train.shape[1:]), len(data.labels))
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=spec.learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    model.fit(
        data.x_train,
        data.y_train,
        epochs=spec.epochs,
        batch_size=spec.batch_size,
        shuffle=True,
        verbose=0,
    )
    return model


def float_accuracy(model: keras.Model, x: FloatArray, y: IntArray) -> float:
    probs = model.predict(x, batch_size=256, verbose=0)
    return float(np.mean(np.argmax(probs, axis=1) == y))


def convert_to_int8(spec: ModelSpec, model: keras.Model, x_calib: FloatArray) -> bytes:
    """Full-integer quantization: int8 weights, activations, input and output."""
    import tensorflow as tf

    # Batch dimension left dynamic (shape_signature [-1, ...]); the tensor's
    # shape is batch 1, as with TFLiteConverter.from_keras_model.
    input_shape = (None, *x_calib.shape[1:])

    def representative_dataset() -> Iterator[list[FloatArray]]:
        for i in range(len(x_calib)):
            yield [x_calib[i : i + 1]]

    # Export a SavedModel (frozen weights, named input), then convert it.
    with tempfile.TemporaryDirectory(prefix=f"{spec.name}_") as tmp:
        saved_model = Path(tmp) / "saved_model"
        model.export(
            str(saved_model),
            format="tf_saved_model",
            input_signature=[tf.TensorSpec(input_shape, tf.float32, name=spec.input_name)],
            verbose=False,
        )
        converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative_dataset
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
        return bytes(converter.convert())


# --------------------------------------------------------------------------
# LiteRT evaluation
# --------------------------------------------------------------------------


def make_interpreter(model_content: bytes) -> tuple[Any, str]:
    """A LiteRT interpreter (ai_edge_litert, else TensorFlow's copy), 1 thread."""
    try:
        from ai_edge_litert.interpreter import Interpreter

        backend = f"ai_edge_litert {version('ai-edge-litert')}"
    except ImportError:
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter
        backend = f"tensorflow.lite {tf.__version__}"
    interpreter = Interpreter(model_content=model_content, num_threads=1)
    interpreter.allocate_tensors()
    return interpreter, backend


@dataclass
class LiteRTEval:
    accuracy: float
    backend: str
    input_details: dict[str, Any]
    output_details: dict[str, Any]
    median_invoke_us: float


def evaluate_tflite(model_content: bytes, x: FloatArray, y: IntArray, bench_runs: int) -> LiteRTEval:
    interpreter, backend = make_interpreter(model_content)
    (inp,) = interpreter.get_input_details()
    (out,) = interpreter.get_output_details()
    if inp["dtype"] != np.int8 or out["dtype"] != np.int8:
        raise RuntimeError(f"expected int8 I/O, got {inp['dtype']} / {out['dtype']}")
    in_scale, in_zp = inp["quantization"]
    out_scale, out_zp = out["quantization"]

    correct = 0
    for i in range(len(x)):
        interpreter.set_tensor(inp["index"], quantize_input(x[i : i + 1], in_scale, in_zp))
        interpreter.invoke()
        q_out = interpreter.get_tensor(out["index"])
        scores = (q_out.astype(np.float32) - out_zp) * out_scale
        correct += int(np.argmax(scores[0]) == y[i])

    interpreter.set_tensor(inp["index"], quantize_input(x[:1], in_scale, in_zp))
    for _ in range(min(100, bench_runs)):  # warm-up
        interpreter.invoke()
    times = []
    for _ in range(bench_runs):
        t0 = time.perf_counter_ns()
        interpreter.invoke()
        times.append(time.perf_counter_ns() - t0)
    median_us = statistics.median(times) / 1000.0 if times else float("nan")
    return LiteRTEval(
        accuracy=correct / len(x),
        backend=backend,
        input_details=inp,
        output_details=out,
        median_invoke_us=median_us,
    )


# --------------------------------------------------------------------------
# Output files
# --------------------------------------------------------------------------


def rebuild_command(seed: int) -> str:
    if seed == DEFAULT_SEED:
        return BASE_REBUILD_COMMAND
    return f"{BASE_REBUILD_COMMAND} --seed {seed}"


def _quant_dict(details: dict[str, Any]) -> dict[str, Any]:
    scale, zero_point = details["quantization"]
    return {"scale": float(scale), "zero_point": int(zero_point)}


@dataclass
class BuildResult:
    name: str
    sidecar: dict[str, Any]
    median_invoke_us: float
    macs: int
    files: list[Path] = field(default_factory=list)


def build_one(spec: ModelSpec, out_dir: Path, seed: int, bench_runs: int) -> BuildResult:
    import keras
    import tensorflow as tf

    t_start = time.monotonic()
    print(f"[{spec.name}] loading data ...", flush=True)
    data = spec.load(seed)
    print(
        f"[{spec.name}] train {data.x_train.shape} / test {data.x_test.shape}, {len(data.labels)} classes",
        flush=True,
    )

    print(f"[{spec.name}] training {spec.epochs} epochs (seed {seed}) ...", flush=True)
    model = train_model(spec, data, seed)
    acc_float = float_accuracy(model, data.x_test, data.y_test)
    macs = count_macs(model)
    print(
        f"[{spec.name}] float test accuracy {acc_float:.4f}, {model.count_params()} parameters, {macs} MACs",
        flush=True,
    )

    print(f"[{spec.name}] converting to full-integer int8 TFLite ...", flush=True)
    tflite_bytes = convert_to_int8(spec, model, data.x_train)
    packaged = spec.name in PACKAGED_MODELS and out_dir.resolve() == DEFAULT_OUT_DIR
    model_dir = PACKAGE_DATA_DIR if packaged else out_dir
    tflite_path = model_dir / f"{spec.name}.tflite"
    tflite_path.write_bytes(tflite_bytes)

    ev = evaluate_tflite(tflite_bytes, data.x_test, data.y_test, bench_runs)
    print(
        f"[{spec.name}] int8 test accuracy {ev.accuracy:.4f} ({ev.backend}), "
        f"{len(tflite_bytes)} bytes, median invoke {ev.median_invoke_us:.1f} us",
        flush=True,
    )

    files = [tflite_path]
    test_npz = out_dir / f"{spec.name}_test.npz"
    save_npz_deterministic(test_npz, x=data.x_test, y=data.y_test)
    if test_npz.stat().st_size >= MAX_TEST_NPZ_BYTES:
        print(f"[{spec.name}] test split too large for the repo, not kept", flush=True)
        test_npz.unlink()
        test_npz_name = None
    else:
        files.append(test_npz)
        test_npz_name = test_npz.name

    sidecar: dict[str, Any] = {
        "name": spec.name,
        "file": tflite_path.name,
        "size_bytes": len(tflite_bytes),
        "sha256": hashlib.sha256(tflite_bytes).hexdigest(),
        "task": spec.task,
        "labels": data.labels,
        "input": {
            "name": ev.input_details["name"],
            "shape": [int(d) for d in ev.input_details["shape"]],
            "shape_signature": [int(d) for d in ev.input_details["shape_signature"]],
            "dtype": "int8",
            "layout": data.input_layout,
            "quantization": _quant_dict(ev.input_details),
            "quantize": "q = clip(rint(x / scale) + zero_point, -128, 127), float32, half to even",
        },
        "output": {
            "name": ev.output_details["name"],
            "shape": [int(d) for d in ev.output_details["shape"]],
            "dtype": "int8",
            "meaning": "softmax class probabilities; index i is labels[i]",
            "quantization": _quant_dict(ev.output_details),
            "dequantize": "p = (q - zero_point) * scale",
        },
        "preprocessing": data.preprocessing,
        "float_accuracy": round(acc_float, 6),
        "int8_accuracy": round(ev.accuracy, 6),
        "accuracy_note": (
            "fraction of the held-out split classified correctly; float = Keras model, "
            f"int8 = this .tflite run with {ev.backend} (one sample per invoke)"
        ),
        "num_train_samples": len(data.y_train),
        "num_test_samples": len(data.y_test),
        "test_split": data.split,
        "test_data": test_npz_name,
        "data_source": data.data_source,
        "training": {
            "architecture": spec.architecture,
            "parameters": int(model.count_params()),
            "macs": macs,
            "epochs": spec.epochs,
            "batch_size": spec.batch_size,
            "optimizer": f"Adam(lr={spec.learning_rate})",
            "representative_dataset": f"all {len(data.y_train)} training samples",
            "tensorflow_version": tf.__version__,
            "keras_version": keras.__version__,
            "numpy_version": np.__version__,
        },
        "seed": seed,
        "rebuild_command": rebuild_command(seed),
    }
    sidecar_path = model_dir / f"{spec.name}.json"
    sidecar_path.write_text(json.dumps(sidecar, indent=2) + "\n")
    files.append(sidecar_path)
    if packaged:
        for path in (tflite_path, sidecar_path):
            link = out_dir / path.name
            if not link.is_symlink():
                link.unlink(missing_ok=True)
                link.symlink_to(Path("..") / path.relative_to(REPO_ROOT))
    keras.backend.clear_session()
    print(f"[{spec.name}] done in {time.monotonic() - t_start:.1f} s", flush=True)
    return BuildResult(spec.name, sidecar, ev.median_invoke_us, macs, files)


# --------------------------------------------------------------------------
# Test fixture: an unresolvable custom op
# --------------------------------------------------------------------------


def make_custom_op_model(model_content: bytes, custom_code: str = CUSTOM_OP_NAME) -> tuple[bytes, str]:
    """Rewrite one operator code of a TFLite model into CUSTOM ``custom_code``.

    The operator code used by exactly one operator (first such in execution
    order) is chosen, so the result has a single unresolvable node. Returns the
    new flatbuffer and the name of the builtin that was replaced.
    """
    import flatbuffers
    from tensorflow.lite.python import schema_py_generated as schema_fb

    model = schema_fb.ModelT.InitFromPackedBuf(bytearray(model_content), 0)
    builtin_names = {v: k for k, v in vars(schema_fb.BuiltinOperator).items() if not k.startswith("_")}
    usage: dict[int, int] = {}
    order: list[int] = []
    for subgraph in model.subgraphs:
        for op in subgraph.operators:
            if op.opcodeIndex not in usage:
                order.append(op.opcodeIndex)
            usage[op.opcodeIndex] = usage.get(op.opcodeIndex, 0) + 1
    candidates = [i for i in order if usage[i] == 1] or order
    target = candidates[0]

    opcode = model.operatorCodes[target]
    replaced = builtin_names.get(max(opcode.builtinCode, opcode.deprecatedBuiltinCode), "?")
    opcode.builtinCode = schema_fb.BuiltinOperator.CUSTOM
    opcode.deprecatedBuiltinCode = schema_fb.BuiltinOperator.CUSTOM
    opcode.customCode = custom_code
    opcode.version = 1
    for subgraph in model.subgraphs:
        for op in subgraph.operators:
            if op.opcodeIndex == target:
                op.builtinOptionsType = schema_fb.BuiltinOptions.NONE
                op.builtinOptions = None
                op.customOptions = None

    builder = flatbuffers.Builder(len(model_content) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=TFLITE_FILE_IDENTIFIER)
    return bytes(builder.Output()), replaced


def build_fixtures(out_dir: Path, fixtures_dir: Path) -> Path:
    source = out_dir / f"{MODEL_KEYS['digits']}.tflite"
    if not source.exists():
        raise SystemExit(f"{source} not found: build the digits model first")
    content, replaced = make_custom_op_model(source.read_bytes())
    fixtures_dir.mkdir(parents=True, exist_ok=True)
    dest = fixtures_dir / CUSTOM_OP_FIXTURE
    dest.write_bytes(content)
    print(
        f"[fixtures] {dest}: {source.name} with {replaced} rewritten to custom op "
        f"{CUSTOM_OP_NAME!r} ({len(content)} bytes)",
        flush=True,
    )
    check_custom_op_fixture(content)
    return dest


def check_custom_op_fixture(content: bytes) -> None:
    """The fixture must load but fail at allocate_tensors naming the custom op."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter
    try:
        interpreter = Interpreter(model_content=content)
        interpreter.allocate_tensors()
    except (RuntimeError, ValueError) as exc:
        if CUSTOM_OP_NAME not in str(exc):
            raise RuntimeError(f"fixture failed for another reason: {exc}") from exc
        first_line = str(exc).strip().splitlines()[0]
        print(f"[fixtures] LiteRT rejects it as expected: {first_line}", flush=True)
        return
    raise RuntimeError("custom-op fixture unexpectedly allocated without error")


# --------------------------------------------------------------------------
# Summary and README
# --------------------------------------------------------------------------

SUMMARY_COLUMNS = ["model", "train/test", "float acc", "int8 acc", "bytes", "MACs", "invoke us"]


def print_summary(results: list[BuildResult]) -> None:
    rows = [
        [
            r.name,
            f"{r.sidecar['num_train_samples']}/{r.sidecar['num_test_samples']}",
            f"{r.sidecar['float_accuracy']:.4f}",
            f"{r.sidecar['int8_accuracy']:.4f}",
            str(r.sidecar["size_bytes"]),
            str(r.macs),
            f"{r.median_invoke_us:.1f}",
        ]
        for r in results
    ]
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(SUMMARY_COLUMNS)]
    line = "  ".join(c.ljust(w) for c, w in zip(SUMMARY_COLUMNS, widths, strict=True))
    print("\nSummary (accuracy on the held-out split; invoke = median LiteRT, 1 thread)")
    print(line)
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))


def write_readme(out_dir: Path, date: str) -> Path:
    """models/README.md from the sidecars present in out_dir."""
    sidecars = []
    for name in MODEL_SPECS:
        path = out_dir / f"{name}.json"
        if path.exists():
            sidecars.append(json.loads(path.read_text()))
    commands = sorted({s["rebuild_command"] for s in sidecars}) or [BASE_REBUILD_COMMAND]

    lines = [
        "# Shipped models",
        "",
        f"Built on {date} by `scripts/build_models.py`; every number below is printed",
        "by that script (and recorded in the per-model `<name>.json` sidecar). Accuracy",
        "is measured on the held-out split shipped as `<name>_test.npz`; the int8",
        "accuracy runs the `.tflite` file in the LiteRT interpreter.",
        "",
        "All models are full-integer int8 TFLite (int8 input and output,",
        "`TFLITE_BUILTINS_INT8` ops only, calibrated on the training split).",
        "",
        "| file | data | input | output | float acc | int8 acc | size (bytes) | rebuild |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for s in sidecars:
        src = s["data_source"]
        data = (
            f"{src['package']} {src['package_version']}, {src['dataset']}, "
            f"{s['num_train_samples']} train / {s['num_test_samples']} test"
        )
        inp, out = s["input"], s["output"]
        inp_txt = (
            f"`{inp['shape']}` int8, scale {inp['quantization']['scale']:.6g}, "
            f"zero point {inp['quantization']['zero_point']}"
        )
        out_txt = (
            f"`{out['shape']}` int8 softmax over {len(s['labels'])} classes, "
            f"scale {out['quantization']['scale']:.6g}, "
            f"zero point {out['quantization']['zero_point']}"
        )
        lines.append(
            f"| `{s['file']}` | {data} | {inp_txt} | {out_txt} | "
            f"{pct(s['float_accuracy'])} | {pct(s['int8_accuracy'])} | "
            f"{s['size_bytes']} | `{s['rebuild_command']}` |"
        )
    lines += ["", "## Inputs and preprocessing", ""]
    for s in sidecars:
        pre = s["preprocessing"]
        lines.append(f"* `{s['file']}`: {s['input']['layout']}.")
        lines.append(f"  Preprocessing: `{pre['formula']}`, then `{s['input']['quantize']}`.")
        if pre["kind"] == "standardize_per_channel":
            lines.append(
                f"  Per-channel mean/std ({', '.join(pre['channels'])}) are in "
                f"`{s['name']}.json` ({pre['statistics']})."
            )
        lines.append(f"  Labels (output index order): {', '.join(s['labels'])}.")
    lines += [
        "",
        "## Rebuild",
        "",
        "```sh",
        *commands,
        "```",
        "",
        "Options: `python scripts/build_models.py --help`. `--fixtures-only` rewrites",
        f"just `tests/data/{CUSTOM_OP_FIXTURE}` (the digits model with one operator",
        f"turned into the unresolvable custom op `{CUSTOM_OP_NAME}`).",
        "",
    ]
    path = out_dir / "README.md"
    path.write_text("\n".join(lines))
    return path


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Train the edge_runtime example models (digits CNN, BasicMotions IMU "
            "1D CNN) and export them as full-integer int8 TFLite files with JSON "
            "sidecars, held-out test splits, models/README.md and the "
            "tests/data/custom_op.tflite fixture."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR, help="where models go")
    parser.add_argument("--fixtures-dir", type=Path, default=DEFAULT_FIXTURES_DIR, help="where test fixtures go")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed for split, init, training")
    parser.add_argument(
        "--models",
        nargs="+",
        choices=list(MODEL_KEYS),
        default=list(MODEL_KEYS),
        help="which models to build",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--fixtures-only",
        action="store_true",
        help="only (re)write the custom-op fixture from the existing digits model",
    )
    mode.add_argument("--no-fixtures", action="store_true", help="do not write test fixtures")
    parser.add_argument("--bench-runs", type=int, default=1000, help="LiteRT invokes timed per model (median)")
    parser.add_argument("--date", type=iso_date, default=DEFAULT_DATE, help="build date written to README.md")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out_dir: Path = args.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)

    if args.fixtures_only:
        build_fixtures(out_dir, args.fixtures_dir)
        return 0

    selected = [key for key in MODEL_KEYS if key in args.models]
    results = [build_one(MODEL_SPECS[MODEL_KEYS[key]], out_dir, args.seed, args.bench_runs) for key in selected]
    readme = write_readme(out_dir, args.date)
    fixture = None
    if not args.no_fixtures and "digits" in args.models:
        fixture = build_fixtures(out_dir, args.fixtures_dir)

    print_summary(results)
    print("\nFiles written:")
    for path in [p for r in results for p in r.files] + [readme] + ([fixture] if fixture else []):
        print(f"  {path} ({path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
