#!/usr/bin/env python3
"""Train a 3-stage early-exit int8 CNN and write the bundle ``models/digits_early_exit/``.

Data
----
scikit-learn's bundled ``load_digits`` (8x8 grayscale, 10 classes), pixel / 16,
bilinearly upscaled to 32x32 (``tf.image.resize``), clipped to [0, 1], NHWC
[N, 32, 32, 1]. Stratified split with ``--seed``: 60 % train, 20 % calibration
(shipped for ``edge-runtime calibrate``), 20 % test (shipped, held out).

Network
-------
A CNN backbone in three stages, each ending in a carried feature tensor that
goes through ReLU6, i.e. lies in the fixed range [0, 6]:

* stage 0 (cheap):  image -> carry0 [16x16x16] -> exit head 0 (logits);
* stage 1:          carry0 -> carry1 [8x8x32] -> exit head 1 (logits);
* stage 2 (costly): carry1 -> final logits.

The backbone and final head are trained first (cross entropy). The carry
batch norms are then rescaled so that the top 0.01 % of the training
activations saturate the ReLU6 (ReLU is positively homogeneous: the next
convolution's kernel is divided by the same factor), so every carry uses the
full [0, 6] range. Exit heads 0 and 1 are trained last, backbone frozen, by
distillation from the final head (temperature-scaled KL divergence to its
softmax plus a little cross entropy with the labels). All logits are the
pre-softmax output of a Dense layer.

Quantization
------------
Each stage is converted separately to a full-integer int8 TFLite file (int8
input and outputs, TFLITE_BUILTINS_INT8 only), calibrated with the training
split propagated through the float stages. Because the carry is a ReLU6 output
that saturates on the calibration data, the output range of stage k and the
input range of stage k+1 are both exactly [0, 6], hence the same (scale, zero
point): the raw int8 carry can be handed from one stage to the next. The build
reads the files back with the LiteRT interpreter and fails if they differ.
Input/output tensors are renamed in the flatbuffer to ``image``, ``carry0``,
``carry1``, ``stage<k>_logits``.

OpenVINO IR (``stage<k>.xml/.bin``) is written from each .tflite by a Python
with ``openvino`` (this one, or ``--openvino-python``), which also checks the
tensor names and runs the int8 chain on the test split.

Outputs in ``--out-dir``: stage0/1/2 .tflite, .xml, .bin, ``bundle.json``
(manifest parsed by edge_runtime), ``calibration.npz``, ``test.npz`` (``x``
float32 [N, 32, 32, 1] after preprocessing, ``y`` int64) and ``README.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

# Quieter TensorFlow and no oneDNN graph rewrites; set before TensorFlow is imported.
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
NAME = "digits_early_exit"
DEFAULT_OUT_DIR = REPO_ROOT / "models" / NAME
DEFAULT_SEED = 20261122
DEFAULT_DATE = "2026-11-22"
BASE_REBUILD_COMMAND = (
    "pip install -r scripts/requirements-train.txt && "
    "python scripts/build_early_exit.py --openvino-python <python with openvino>"
)
IMAGE_SIZE = 32
CARRY_MAX = 6.0  # ReLU6: every carried tensor lies in [0, CARRY_MAX]
SATURATION_QUANTILE = 99.99  # percent of training carry activations left below CARRY_MAX
PLACEHOLDER_THRESHOLD = 0.9
MAX_NPZ_BYTES = 2_000_000
MAX_MODEL_BYTES = 2_000_000
NUM_STAGES = 3
STAGE2_EXTRA = 5  # extra Conv(64,3x3) @32x32 layers in stage 2: sets the cost of a full pass
# Tensor names written into the .tflite files (input, logits, carry) per stage.
TENSOR_NAMES = [
    ("image", "stage0_logits", "carry0"),
    ("carry0", "stage1_logits", "carry1"),
    ("carry1", "stage2_logits", None),
]


def log(message: str) -> None:
    print(f"[{NAME}] {message}", flush=True)


# --------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------


@dataclass
class Data:
    x_train: FloatArray
    y_train: IntArray
    x_calib: FloatArray
    y_calib: IntArray
    x_test: FloatArray
    y_test: IntArray
    labels: list[str]
    source: str
    split: str


def load_data(seed: int) -> Data:
    """Digits / 16, bilinear 8x8 -> 32x32, clip [0, 1]; stratified 60/20/20 split."""
    import sklearn.datasets
    import tensorflow as tf
    from sklearn.model_selection import train_test_split

    digits = sklearn.datasets.load_digits()
    small = (digits.images.astype(np.float32) / np.float32(16.0))[..., np.newaxis]
    big = tf.image.resize(small, (IMAGE_SIZE, IMAGE_SIZE), method="bilinear", antialias=False).numpy()
    x = np.ascontiguousarray(np.clip(big, 0.0, 1.0), dtype=np.float32)
    y = digits.target.astype(np.int64)
    x_rest, x_test, y_rest, y_test = train_test_split(x, y, test_size=0.2, stratify=y, random_state=seed)
    x_train, x_calib, y_train, y_calib = train_test_split(
        x_rest, y_rest, test_size=0.25, stratify=y_rest, random_state=seed
    )
    data_file = Path(sklearn.datasets.__file__).parent / "data" / "digits.csv.gz"
    return Data(
        x_train=x_train,
        y_train=y_train,
        x_calib=x_calib,
        y_calib=y_calib,
        x_test=x_test,
        y_test=y_test,
        labels=[str(int(t)) for t in digits.target_names],
        source=(
            f"scikit-learn {version('scikit-learn')} `sklearn.datasets.load_digits` "
            f"({len(y)} images, {data_file.name} sha256 {sha256_file(data_file)[:16]}...)"
        ),
        split=(
            f"train_test_split(test_size=0.2, stratify=y, random_state={seed}) for test, then "
            f"train_test_split(test_size=0.25, stratify=y, random_state={seed}) of the rest for calibration"
        ),
    )


# --------------------------------------------------------------------------
# Network
# --------------------------------------------------------------------------


@dataclass
class Net:
    bodies: list[keras.Model]  # body0: image->carry0, body1: carry0->carry1, body2: carry1->logits
    heads: list[keras.Model]  # exit heads on carry0 and carry1
    carry_bns: list[Any]  # the batch norm in front of each carry's ReLU6
    next_convs: list[Any]  # the first conv consuming each carry

    def stage_model(self, k: int) -> keras.Model:
        """Stage k as one Keras model: {'logits', 'carry'} (stage 2: {'logits'})."""
        import keras

        body = self.bodies[k]
        inputs = keras.Input(shape=body.input_shape[1:], batch_size=1, name=TENSOR_NAMES[k][0])
        features = body(inputs)
        if k == NUM_STAGES - 1:
            return keras.Model(inputs, {"logits": features}, name=f"stage{k}")
        return keras.Model(inputs, {"logits": self.heads[k](features), "carry": features}, name=f"stage{k}")


ARCHITECTURE = [
    "stage 0: Conv(16,3x3) @32x32 - Conv(16,3x3) @32x32 -> ReLU6 carry0 [32x32x16]; "
    "exit 0: AvgPool(8) - Flatten(256) - Dense(10)",
    "stage 1: Conv(32,3x3) @32x32 - Conv(32,3x3) @32x32 -> ReLU6 carry1 [32x32x32]; "
    "exit 1: AvgPool(8) - Flatten(512) - Dense(10)",
    f"stage 2: Conv(64,3x3) @32x32 - {STAGE2_EXTRA}x Conv(64,3x3) @32x32 - Conv(128,3x3,stride 2) @16x16 "
    "- Conv(128,3x3) @16x16 - Conv(128,3x3,stride 2) @8x8 - GlobalAvgPool - Dense(10)",
]


def build_net(num_classes: int) -> Net:
    import keras
    from keras import layers

    def block(x: Any, filters: int, name: str, strides: int = 1, act: str = "relu") -> tuple[Any, Any, Any]:
        """Conv(3x3, no bias) - BatchNorm - activation; returns (output, conv, bn)."""
        conv = layers.Conv2D(
            filters, 3, strides=strides, padding="same", use_bias=False, kernel_initializer="he_normal", name=name
        )
        bn = layers.BatchNormalization(name=f"{name}_bn")
        return layers.Activation(act, name=f"{name}_{act}")(bn(conv(x))), conv, bn

    # Stage 0 (stages 0 and 1 run at the full 32x32 resolution).
    image = keras.Input(shape=(IMAGE_SIZE, IMAGE_SIZE, 1), name="image")
    x, _, _ = block(image, 16, "s0_conv1")
    carry0, _, bn0 = block(x, 16, "s0_conv2", act="relu6")
    body0 = keras.Model(image, carry0, name="body0")

    # Stage 1.
    inp1 = keras.Input(shape=carry0.shape[1:], name="carry0")
    x, n0, _ = block(inp1, 32, "s1_conv1")
    carry1, _, bn1 = block(x, 32, "s1_conv2", act="relu6")
    body1 = keras.Model(inp1, carry1, name="body1")

    # Stage 2 with the final head.
    inp2 = keras.Input(shape=carry1.shape[1:], name="carry1")
    x, n1, _ = block(inp2, 64, "s2_conv1")
    for i in range(STAGE2_EXTRA):
        x, _, _ = block(x, 64, f"s2_conv1_{i + 1}")
    x, _, _ = block(x, 128, "s2_conv2", strides=2)
    x, _, _ = block(x, 128, "s2_conv3")
    x, _, _ = block(x, 128, "s2_conv4", strides=2)
    x = layers.GlobalAveragePooling2D(name="s2_gap")(x)
    logits = layers.Dense(num_classes, name="final_logits")(x)
    body2 = keras.Model(inp2, logits, name="body2")

    # Exit heads (pre-softmax logits); average pooling to a 4x4 map keeps the layout.
    heads = []
    for k, carry in enumerate((carry0, carry1)):
        h_in = keras.Input(shape=carry.shape[1:], name=f"carry{k}")
        h = layers.AveragePooling2D(IMAGE_SIZE // 4, name=f"exit{k}_pool")(h_in)
        h = layers.Reshape((-1,), name=f"exit{k}_flatten")(h)
        h = layers.Dense(num_classes, name=f"exit{k}_logits")(h)
        heads.append(keras.Model(h_in, h, name=f"exit{k}"))
    return Net([body0, body1, body2], heads, [bn0, bn1], [n0, n1])


def epoch_logger(what: str, epochs: int, every: int = 5) -> Any:
    """A Keras callback printing loss (and accuracy) every ``every`` epochs."""
    import keras

    class _Logger(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.t0 = time.monotonic()

        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            if (epoch + 1) % every and epoch + 1 != epochs:
                return
            logs = logs or {}
            parts = [f"{k} {v:.4f}" for k, v in logs.items() if k in ("loss", "accuracy")]
            log(f"{what} epoch {epoch + 1}/{epochs}: {', '.join(parts)} ({time.monotonic() - self.t0:.0f} s)")

    return _Logger()


def train_backbone(net: Net, data: Data, epochs: int, batch_size: int, lr: float) -> None:
    import keras

    image = keras.Input(shape=(IMAGE_SIZE, IMAGE_SIZE, 1))
    full = keras.Model(image, net.bodies[2](net.bodies[1](net.bodies[0](image))), name="backbone")
    full.compile(
        optimizer=keras.optimizers.Adam(learning_rate=lr),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    full.fit(
        data.x_train,
        data.y_train,
        epochs=epochs,
        batch_size=batch_size,
        shuffle=True,
        verbose=0,
        callbacks=[epoch_logger("backbone", epochs)],
    )


def rescale_carries(net: Net, x_train: FloatArray) -> list[float]:
    """Scale each carry so its top (100 - SATURATION_QUANTILE) % training activations saturate ReLU6.

    The carry is relu6(bn(conv(x))); multiplying the batch norm's gamma and beta
    by s gives relu6(s * z), and relu6(s * z) / s == relu(z) wherever s * z < 6,
    so dividing the next (bias-free) conv's kernel by s keeps the function
    except for the few clipped activations. Factors below 1 are not applied.
    """
    import keras

    factors = []
    x = x_train
    for k in range(NUM_STAGES - 1):
        body = net.bodies[k]
        bn = net.carry_bns[k]
        pre = keras.Model(body.inputs, bn.output).predict(x, batch_size=256, verbose=0)
        q = float(np.percentile(pre[pre > 0], SATURATION_QUANTILE))
        s = max(1.0, CARRY_MAX / q)
        if s > 1.0:
            gamma, beta, mean, var = bn.get_weights()
            bn.set_weights([gamma * np.float32(s), beta * np.float32(s), mean, var])
            (kernel,) = net.next_convs[k].get_weights()
            net.next_convs[k].set_weights([kernel / np.float32(s)])
        factors.append(s)
        x = body.predict(x, batch_size=256, verbose=0)
    return factors


def train_heads_by_distillation(
    net: Net,
    data: Data,
    epochs: int,
    batch_size: int,
    lr: float,
    temperature: float,
    alpha: float,
) -> None:
    """Exit heads on frozen carries: alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(labels)."""
    import keras
    from keras import ops

    num_classes = len(data.labels)
    t = float(temperature)

    def loss_fn(y_true: Any, y_pred: Any) -> Any:
        teacher = y_true[:, :num_classes]
        labels = ops.cast(y_true[:, num_classes], "int32")
        p_teacher = ops.softmax(teacher / t, axis=-1)
        log_p_student = ops.log_softmax(y_pred / t, axis=-1)
        log_p_teacher = ops.log_softmax(teacher / t, axis=-1)
        kl = ops.sum(p_teacher * (log_p_teacher - log_p_student), axis=-1) * (t * t)
        ce = keras.losses.sparse_categorical_crossentropy(labels, y_pred, from_logits=True)
        return alpha * kl + (1.0 - alpha) * ce

    carries = propagate(net, data.x_train)
    teacher = net.bodies[2].predict(carries[1], batch_size=256, verbose=0)
    target = np.concatenate([teacher, data.y_train[:, None].astype(np.float32)], axis=1)
    for k, head in enumerate(net.heads):
        head.compile(optimizer=keras.optimizers.Adam(learning_rate=lr), loss=loss_fn)
        head.fit(
            carries[k],
            target,
            epochs=epochs,
            batch_size=batch_size,
            shuffle=True,
            verbose=0,
            callbacks=[epoch_logger(f"exit head {k}", epochs, every=20)],
        )
        log(f"exit head {k}: final distillation loss {head.evaluate(carries[k], target, verbose=0):.4f}")


def propagate(net: Net, x: FloatArray) -> list[FloatArray]:
    """[carry0, carry1] for the float network."""
    c0 = net.bodies[0].predict(x, batch_size=256, verbose=0)
    c1 = net.bodies[1].predict(c0, batch_size=256, verbose=0)
    return [c0, c1]


def float_logits(net: Net, x: FloatArray) -> list[FloatArray]:
    c0, c1 = propagate(net, x)
    return [
        net.heads[0].predict(c0, batch_size=256, verbose=0),
        net.heads[1].predict(c1, batch_size=256, verbose=0),
        net.bodies[2].predict(c1, batch_size=256, verbose=0),
    ]


# --------------------------------------------------------------------------
# Conversion
# --------------------------------------------------------------------------


def convert_stage(model: keras.Model, rep: FloatArray, input_name: str) -> bytes:
    """Full-integer int8 TFLite of one stage, calibrated on ``rep`` (one sample per step)."""
    import tensorflow as tf

    def representative_dataset() -> Iterator[list[FloatArray]]:
        for i in range(len(rep)):
            yield [rep[i : i + 1]]

    with tempfile.TemporaryDirectory(prefix=f"{model.name}_") as tmp:
        saved_model = Path(tmp) / "saved_model"
        model.export(
            str(saved_model),
            format="tf_saved_model",
            input_signature=[tf.TensorSpec((1, *rep.shape[1:]), tf.float32, name=input_name)],
            verbose=False,
        )
        converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative_dataset
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
        return bytes(converter.convert())


def rename_io_tensors(content: bytes, names: dict[str, str]) -> bytes:
    """Give the signature's input/output tensors the names ``names[signature key]``."""
    import flatbuffers
    from tensorflow.lite.python import schema_py_generated as schema_fb

    model = schema_fb.ModelT.InitFromPackedBuf(bytearray(content), 0)
    if len(model.signatureDefs or []) != 1 or len(model.subgraphs) != 1:
        raise RuntimeError("expected one subgraph and one signature")
    sig = model.signatureDefs[0]
    tensors = model.subgraphs[0].tensors
    seen = set()
    for tmap in [*sig.inputs, *sig.outputs]:
        key = tmap.name.decode() if isinstance(tmap.name, bytes) else str(tmap.name)
        tensors[tmap.tensorIndex].name = names[key]
        seen.add(key)
    if seen != set(names):
        raise RuntimeError(f"signature keys {sorted(seen)} != expected {sorted(names)}")
    builder = flatbuffers.Builder(len(content) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


# --------------------------------------------------------------------------
# LiteRT: checks, chained evaluation, latency
# --------------------------------------------------------------------------


def make_interpreter(content: bytes) -> Any:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=content, num_threads=1)
    interpreter.allocate_tensors()
    return interpreter


@dataclass
class StageIO:
    input: dict[str, Any]
    logits: dict[str, Any]
    carry: dict[str, Any] | None


def stage_io(interpreter: Any, k: int) -> StageIO:
    in_name, logits_name, carry_name = TENSOR_NAMES[k]
    inputs = {d["name"]: d for d in interpreter.get_input_details()}
    outputs = {d["name"]: d for d in interpreter.get_output_details()}
    expected_out = {logits_name} | ({carry_name} if carry_name else set())
    if set(inputs) != {in_name} or set(outputs) != expected_out:
        raise SystemExit(
            f"stage{k}: tensors {sorted(inputs)} -> {sorted(outputs)}, expected {in_name} -> {expected_out}"
        )
    for d in [*inputs.values(), *outputs.values()]:
        if d["dtype"] != np.int8:
            raise SystemExit(f"stage{k}: tensor {d['name']} is {d['dtype']}, not int8")
        if len(d["quantization_parameters"]["scales"]) != 1:
            raise SystemExit(f"stage{k}: tensor {d['name']} is not per-tensor quantized")
    return StageIO(inputs[in_name], outputs[logits_name], outputs[carry_name] if carry_name else None)


def quant_of(details: dict[str, Any]) -> tuple[float, int]:
    scale, zero_point = details["quantization"]
    return float(scale), int(zero_point)


def check_carry_quantization(ios: list[StageIO]) -> list[dict[str, Any]]:
    """Carry output quantization of stage k must equal the input quantization of stage k+1, bit for bit."""
    rows = []
    for k in range(NUM_STAGES - 1):
        out = ios[k].carry
        inp = ios[k + 1].input
        assert out is not None
        p_out = out["quantization_parameters"]
        p_in = inp["quantization_parameters"]
        same = (
            np.array_equal(p_out["scales"].astype(np.float32), p_in["scales"].astype(np.float32))
            and np.array_equal(p_out["zero_points"], p_in["zero_points"])
            and list(out["shape"]) == list(inp["shape"])
        )
        row = {
            "carry": out["name"],
            "shape": [int(d) for d in out["shape"]],
            "out": quant_of(out),
            "in": quant_of(inp),
            "equal": bool(same),
        }
        rows.append(row)
        if not same:
            raise SystemExit(
                f"CARRY QUANTIZATION MISMATCH: stage{k} output {out['name']} {row['out']} {row['shape']} "
                f"!= stage{k + 1} input {inp['name']} {row['in']} {[int(d) for d in inp['shape']]}"
            )
    return rows


def chain_litert(contents: list[bytes], x: FloatArray) -> list[FloatArray]:
    """Dequantized logits of every exit, running the int8 stages back to back with the raw int8 carry."""
    interpreters = [make_interpreter(c) for c in contents]
    ios = [stage_io(it, k) for k, it in enumerate(interpreters)]
    logits: list[list[FloatArray]] = [[] for _ in range(NUM_STAGES)]
    in_scale, in_zp = quant_of(ios[0].input)
    for i in range(len(x)):
        tensor = quantize_input(x[i : i + 1], in_scale, in_zp)
        for k, (it, io_) in enumerate(zip(interpreters, ios)):
            it.set_tensor(io_.input["index"], tensor)
            it.invoke()
            scale, zp = quant_of(io_.logits)
            logits[k].append((it.get_tensor(io_.logits["index"])[0].astype(np.float32) - zp) * np.float32(scale))
            if io_.carry is not None:
                tensor = it.get_tensor(io_.carry["index"])  # raw int8, no requantization
    return [np.stack(v) for v in logits]


def bench_litert(content: bytes, runs: int, rng: np.random.Generator, passes: int = 7) -> float:
    """Invoke time in microseconds, 1 thread, random int8 input: 100 untimed invokes, then the
    median of ``passes`` pass medians of ``runs // passes`` invokes each (as scripts/stage_costs.py)."""
    it = make_interpreter(content)
    (inp,) = it.get_input_details()
    it.set_tensor(inp["index"], rng.integers(-128, 128, size=inp["shape"], dtype=np.int8))
    for _ in range(min(100, runs)):
        it.invoke()
    medians = []
    for _ in range(passes):
        times = []
        for _ in range(max(1, runs // passes)):
            t0 = time.perf_counter_ns()
            it.invoke()
            times.append(time.perf_counter_ns() - t0)
        medians.append(statistics.median(times))
    return statistics.median(medians) / 1000.0


def accuracy(logits: FloatArray, y: IntArray) -> float:
    return float(np.mean(np.argmax(logits, axis=1) == y))


def softmax(z: FloatArray) -> FloatArray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    out: FloatArray = e / e.sum(axis=1, keepdims=True)
    return out


def early_exit_summary(logits: list[FloatArray], y: IntArray, threshold: float) -> tuple[float, list[int]]:
    """Accuracy and exits taken with max_prob >= threshold at exits 0 and 1."""
    n = len(y)
    pred = np.argmax(logits[-1], axis=1)
    exit_at = np.full(n, NUM_STAGES - 1)
    for k in range(NUM_STAGES - 2, -1, -1):
        take = softmax(logits[k]).max(axis=1) >= threshold
        exit_at[take] = k
    for k in range(NUM_STAGES):
        pred = np.where(exit_at == k, np.argmax(logits[k], axis=1), pred)
    return float(np.mean(pred == y)), [int(np.sum(exit_at == k)) for k in range(NUM_STAGES)]


# --------------------------------------------------------------------------
# OpenVINO (run by a Python that has openvino; may be another environment)
# --------------------------------------------------------------------------

OPENVINO_HELPER = r"""
import json, sys
import numpy as np
import openvino as ov

args = json.loads(sys.argv[1])
out_dir = args["out_dir"]
core = ov.Core()
report = {"openvino_version": ov.__version__, "stages": []}

def port(p):
    return (p.get_any_name(), sorted(p.get_names()), str(p.get_element_type()), list(p.get_partial_shape().to_shape()))

def ports(model):
    return [port(p) for p in model.inputs], [port(p) for p in model.outputs]

for k in range(len(args["stages"])):
    tfl = f"{out_dir}/stage{k}.tflite"
    xml = f"{out_dir}/stage{k}.xml"
    ov.save_model(core.read_model(tfl), xml, compress_to_fp16=False)
    ir_in, ir_out = ports(core.read_model(xml))
    tf_in, tf_out = ports(core.read_model(tfl))
    report["stages"].append(
        {"ir_inputs": ir_in, "ir_outputs": ir_out, "tflite_inputs": tf_in, "tflite_outputs": tf_out}
    )

data = np.load(args["test_npz"])
x, y = data["x"], data["y"]
in_scale, in_zp = args["input_quant"]

def chain(kind):
    compiled = []
    for k in range(len(args["stages"])):
        path = f"{out_dir}/stage{k}.xml" if kind == "ir" else f"{out_dir}/stage{k}.tflite"
        compiled.append(core.compile_model(path, "CPU", {"INFERENCE_NUM_THREADS": 1, "PERFORMANCE_HINT": "LATENCY"}))
    requests = [c.create_infer_request() for c in compiled]
    correct = [0] * len(requests)
    for i in range(len(x)):
        q = np.rint(x[i:i + 1].astype(np.float32) / np.float32(in_scale)) + np.float32(in_zp)
        tensor = np.clip(q, -128, 127).astype(np.int8)
        for k, (c, r, st) in enumerate(zip(compiled, requests, args["stages"])):
            res = r.infer({st["input"]: tensor})
            q_logits = res[c.output(st["logits"])]
            assert q_logits.dtype == np.int8, q_logits.dtype
            scale, zp = st["logits_quant"]
            logits = (q_logits[0].astype(np.float32) - zp) * np.float32(scale)
            correct[k] += int(np.argmax(logits) == y[i])
            if st["carry"] is not None:
                tensor = res[c.output(st["carry"])]
                assert tensor.dtype == np.int8, tensor.dtype
    return [c / len(x) for c in correct]

report["accuracy_ir"] = chain("ir")
report["accuracy_tflite_frontend"] = chain("tflite")
print("JSON:" + json.dumps(report))
"""


def openvino_python(requested: str | None) -> str:
    if requested:
        return requested
    try:
        import openvino  # noqa: F401
    except ImportError:
        raise SystemExit(
            "openvino is not importable here: pass --openvino-python /path/to/python (with openvino installed)"
        ) from None
    return sys.executable


def run_openvino(python: str, out_dir: Path, ios: list[StageIO]) -> dict[str, Any]:
    stages = []
    for k, io_ in enumerate(ios):
        stages.append(
            {
                "input": TENSOR_NAMES[k][0],
                "logits": TENSOR_NAMES[k][1],
                "carry": TENSOR_NAMES[k][2],
                "logits_quant": list(quant_of(io_.logits)),
            }
        )
    args = {
        "out_dir": str(out_dir),
        "test_npz": str(out_dir / "test.npz"),
        "input_quant": list(quant_of(ios[0].input)),
        "stages": stages,
    }
    proc = subprocess.run(
        [python, "-c", OPENVINO_HELPER, json.dumps(args)],
        capture_output=True,
        text=True,
        check=False,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("JSON:")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"OpenVINO step failed ({python}):\n{proc.stdout}\n{proc.stderr}")
    result: dict[str, Any] = json.loads(lines[-1][len("JSON:") :])
    return result


# --------------------------------------------------------------------------
# Output files
# --------------------------------------------------------------------------


def rebuild_command(seed: int) -> str:
    return BASE_REBUILD_COMMAND if seed == DEFAULT_SEED else f"{BASE_REBUILD_COMMAND} --seed {seed}"


def make_bundle(labels: list[str], ov_names: list[dict[str, Any]]) -> dict[str, Any]:
    stages = []
    for k in range(NUM_STAGES):
        in_name, logits_name, carry_name = TENSOR_NAMES[k]
        last = k == NUM_STAGES - 1
        stage: dict[str, Any] = {
            "tflite": f"stage{k}.tflite",
            "openvino": f"stage{k}.xml",
            "input": in_name,
            "logits": logits_name,
            "carry": carry_name,
            "exit": None if last else {"measure": "max_prob", "threshold": PLACEHOLDER_THRESHOLD},
        }
        for key, tfl_name in (("input", in_name), ("logits", logits_name), ("carry", carry_name)):
            ov_name = ov_names[k][key]
            if tfl_name is not None and ov_name != tfl_name:
                stage[f"openvino_{key}"] = ov_name
        stages.append(stage)
    return {
        "format": "edge_runtime.early_exit",
        "version": 1,
        "name": NAME,
        "labels": labels,
        "stages": stages,
        "calibration": None,
    }


def openvino_names(ov_report: dict[str, Any]) -> list[dict[str, Any]]:
    """OpenVINO IR names of each stage's input / logits / carry, matched by TFLite name, else by shape."""
    result = []
    for k, st in enumerate(ov_report["stages"]):
        _in_name, logits_name, carry_name = TENSOR_NAMES[k]
        (ir_in,) = st["ir_inputs"]
        names: dict[str, Any] = {"input": ir_in[0], "logits": None, "carry": None}
        for any_name, all_names, _etype, shape in st["ir_outputs"]:
            if logits_name in all_names or (logits_name not in all_names and shape == [1, 10]):
                names["logits"] = logits_name if logits_name in all_names else any_name
            elif carry_name is not None:
                names["carry"] = carry_name if carry_name in all_names else any_name
        result.append(names)
    return result


# --------------------------------------------------------------------------
# Main build
# --------------------------------------------------------------------------


def table(header: list[str], rows: list[list[str]], markdown: bool) -> list[str]:
    if markdown:
        return [
            "| " + " | ".join(header) + " |",
            "| " + " | ".join("---" for _ in header) + " |",
            *("| " + " | ".join(r) + " |" for r in rows),
        ]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    return [
        "  ".join(h.ljust(w) for h, w in zip(header, widths)),
        "  ".join("-" * w for w in widths),
        *("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows),
    ]


def build(args: argparse.Namespace) -> int:
    import keras
    import tensorflow as tf

    out_dir: Path = args.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    ov_python = openvino_python(args.openvino_python)
    t_start = time.monotonic()

    log("loading data ...")
    data = load_data(args.seed)
    log(f"train {data.x_train.shape} / calibration {data.x_calib.shape} / test {data.x_test.shape}")

    seed_everything(args.seed)
    net = build_net(len(data.labels))
    log(f"training backbone + final head, {args.epochs} epochs (seed {args.seed}) ...")
    train_backbone(net, data, args.epochs, args.batch_size, args.lr)
    final_before = accuracy(net.bodies[2].predict(propagate(net, data.x_test)[1], verbose=0), data.y_test)
    factors = rescale_carries(net, data.x_train)
    final_after = accuracy(net.bodies[2].predict(propagate(net, data.x_test)[1], verbose=0), data.y_test)
    log(
        f"final head float test accuracy {final_before:.4f}; carry scale factors "
        f"{', '.join(f'{s:.3f}' for s in factors)} -> {final_after:.4f}"
    )
    log(
        f"training exit heads by distillation (T={args.temperature}, alpha={args.alpha}, {args.head_epochs} epochs) ..."
    )
    train_heads_by_distillation(
        net, data, args.head_epochs, args.batch_size, args.head_lr, args.temperature, args.alpha
    )
    acc_float = [accuracy(z, data.y_test) for z in float_logits(net, data.x_test)]
    log("float test accuracy per exit: " + ", ".join(f"{a:.4f}" for a in acc_float))

    stage_models = [net.stage_model(k) for k in range(NUM_STAGES)]
    macs = [count_macs(m) for m in stage_models]
    head_macs = [count_macs(h) for h in net.heads] + [0]
    log(f"MACs per stage (incl. exit head): {macs}")

    # Representative data: the training split propagated through the float stages.
    carries_train = propagate(net, data.x_train)
    reps = [data.x_train, *carries_train]
    for k, c in enumerate(carries_train):
        sat = float(np.mean(c >= CARRY_MAX))
        log(f"carry{k} on the training split: min {c.min():g}, max {c.max():g}, {100 * sat:.3f} % saturated")
        if float(c.min()) != 0.0 or float(c.max()) != CARRY_MAX:
            raise SystemExit(f"carry{k} does not span exactly [0, {CARRY_MAX}] on the calibration data")

    contents = []
    for k, model in enumerate(stage_models):
        log(f"converting stage{k} to full-integer int8 TFLite ...")
        raw = convert_stage(model, reps[k], TENSOR_NAMES[k][0])
        keys = {TENSOR_NAMES[k][0]: TENSOR_NAMES[k][0], "logits": TENSOR_NAMES[k][1]}
        if TENSOR_NAMES[k][2] is not None:
            keys["carry"] = TENSOR_NAMES[k][2]
        content = rename_io_tensors(raw, keys)
        (out_dir / f"stage{k}.tflite").write_bytes(content)
        contents.append(content)

    # Read back every file and check I/O types, names and the carry hand-over.
    ios = [stage_io(make_interpreter(c), k) for k, c in enumerate(contents)]
    carry_rows = check_carry_quantization(ios)
    for r in carry_rows:
        log(f"{r['carry']} {r['shape']}: stage output {r['out']} == next stage input {r['in']}: OK")

    save_npz_deterministic(out_dir / "calibration.npz", x=data.x_calib, y=data.y_calib)
    save_npz_deterministic(out_dir / "test.npz", x=data.x_test, y=data.y_test)
    for fname in ("calibration.npz", "test.npz"):
        size = (out_dir / fname).stat().st_size
        if size >= MAX_NPZ_BYTES:
            raise SystemExit(f"{fname} is {size} bytes (limit {MAX_NPZ_BYTES})")

    log("int8 test accuracy per exit (LiteRT, chained stages, raw int8 carry) ...")
    int8_logits = chain_litert(contents, data.x_test)
    acc_int8 = [accuracy(z, data.y_test) for z in int8_logits]
    log("int8 test accuracy per exit: " + ", ".join(f"{a:.4f}" for a in acc_int8))
    ee_acc, ee_counts = early_exit_summary(int8_logits, data.y_test, PLACEHOLDER_THRESHOLD)

    rng = np.random.default_rng(args.seed)
    latency = [bench_litert(c, args.bench_runs, rng) for c in contents]
    log("LiteRT median invoke per stage (us, 1 thread): " + ", ".join(f"{v:.1f}" for v in latency))

    log(f"OpenVINO IR export and int8 chain with {ov_python} ...")
    ov_report = run_openvino(ov_python, out_dir, ios)
    ov_names = openvino_names(ov_report)
    renamed = []
    for k, names in enumerate(ov_names):
        for key, tfl_name in zip(("input", "logits", "carry"), TENSOR_NAMES[k]):
            if tfl_name is not None and names[key] != tfl_name:
                renamed.append(f"stage{k} {key}: {tfl_name} -> {names[key]}")
    log("OpenVINO tensor names: " + ("same as TFLite" if not renamed else "; ".join(renamed)))

    bundle = make_bundle(data.labels, ov_names)
    (out_dir / "bundle.json").write_text(json.dumps(bundle, indent=2) + "\n")

    model_files = [out_dir / f"stage{k}.{ext}" for k in range(NUM_STAGES) for ext in ("tflite", "xml", "bin")]
    tflite_bytes = sum((out_dir / f"stage{k}.tflite").stat().st_size for k in range(NUM_STAGES))
    ir_bytes = sum(p.stat().st_size for p in model_files if p.suffix in (".xml", ".bin"))
    if tflite_bytes + ir_bytes >= MAX_MODEL_BYTES:
        log(f"WARNING: model files total {tflite_bytes + ir_bytes} bytes (>= {MAX_MODEL_BYTES})")

    info = {
        "data": data,
        "seed": args.seed,
        "date": args.date,
        "factors": factors,
        "acc_float": acc_float,
        "acc_int8": acc_int8,
        "acc_ov_ir": ov_report["accuracy_ir"],
        "acc_ov_tflite": ov_report["accuracy_tflite_frontend"],
        "macs": macs,
        "head_macs": head_macs,
        "latency": latency,
        "ios": ios,
        "carry_rows": carry_rows,
        "ov_report": ov_report,
        "ov_names": ov_names,
        "sizes": {k: (out_dir / f"stage{k}.tflite").stat().st_size for k in range(NUM_STAGES)},
        "tflite_bytes": tflite_bytes,
        "ir_bytes": ir_bytes,
        "ee": (ee_acc, ee_counts),
        "args": args,
        "versions": (
            f"TensorFlow {tf.__version__}, Keras {keras.__version__}, NumPy {np.__version__}, "
            f"ai-edge-litert {version('ai-edge-litert')}, OpenVINO {ov_report['openvino_version']}"
        ),
    }
    readme = out_dir / "README.md"
    readme.write_text("\n".join(report_lines(info, markdown=True)) + "\n")

    print()
    print("\n".join(report_lines(info, markdown=False)))
    print("\nFiles written:")
    for path in sorted(out_dir.iterdir()):
        print(f"  {path} ({path.stat().st_size} bytes)")
    print(f"\nDone in {time.monotonic() - t_start:.1f} s")
    return 0


def report_lines(info: dict[str, Any], markdown: bool) -> list[str]:
    """README.md body (markdown) or the console summary (plain tables)."""
    data: Data = info["data"]
    args = info["args"]
    ios: list[StageIO] = info["ios"]
    total_macs = sum(info["macs"])
    total_us = sum(info["latency"])
    cum_us = np.cumsum(info["latency"])
    lines: list[str] = []
    if markdown:
        lines += [
            f"# {NAME}: early-exit int8 bundle",
            "",
            f"Built on {info['date']} by `scripts/build_early_exit.py` (seed {info['seed']}); every number",
            "below is printed by that script. Manifest: `bundle.json` (`edge_runtime.early_exit`, version 1);",
            f"the exit thresholds ({PLACEHOLDER_THRESHOLD}) are placeholders for `edge-runtime calibrate`,",
            "which chooses them on `calibration.npz`.",
            "",
            "## Data",
            "",
            f"* Source: {data.source}.",
            "* Preprocessing: `x = pixel / 16`, bilinear upscale 8x8 -> 32x32 (`tf.image.resize`), clip to",
            "  [0, 1]; NHWC `[N, 32, 32, 1]` float32. The int8 input is",
            "  `q = clip(rint(x / scale) + zero_point, -128, 127)` with stage0's input quantization.",
            f"* Split (stratified): {len(data.y_train)} train / {len(data.y_calib)} calibration / "
            f"{len(data.y_test)} test; {data.split}.",
            "* `calibration.npz` and `test.npz`: `x` float32 after preprocessing, `y` int64 labels.",
            f"* Labels (logit index order): {', '.join(data.labels)}.",
            "",
            "## Architecture",
            "",
            *(f"* {a}" for a in ARCHITECTURE),
            "* Every conv: 3x3 'same', no bias, BatchNorm (folded into the conv by the converter), ReLU (ReLU6",
            "  at the carries); He-normal init. Logits are the pre-softmax Dense output (no softmax).",
            f"* Training: backbone + final head {args.epochs} epochs, Adam(lr={args.lr}), batch {args.batch_size},",
            "  cross entropy. Carry batch norms then rescaled so that the top "
            f"{100 - SATURATION_QUANTILE:.2f} % of training activations",
            f"  saturate ReLU6 (factors {', '.join(f'{s:.3f}' for s in info['factors'])}; "
            "next conv divided by the same).",
            f"* Exit heads: {args.head_epochs} epochs, Adam(lr={args.head_lr}), backbone frozen, distillation from the",
            f"  final head: `{args.alpha} * T^2 * KL(softmax(final/T) || softmax(exit/T)) + {1 - args.alpha:g} * CE`, "
            f"T = {args.temperature}.",
            "",
        ]
    header = ["stage", "MACs (head)", "% of MACs", "tflite bytes", "LiteRT us", "cumulative us", "% of time"]
    rows = [
        [
            f"stage{k}",
            f"{info['macs'][k]} ({info['head_macs'][k]})" if k < NUM_STAGES - 1 else str(info["macs"][k]),
            f"{100 * info['macs'][k] / total_macs:.1f}",
            str(info["sizes"][k]),
            f"{info['latency'][k]:.1f}",
            f"{cum_us[k]:.1f}",
            f"{100 * info['latency'][k] / total_us:.1f}",
        ]
        for k in range(NUM_STAGES)
    ]
    title = (
        "Per stage: MACs (exit head part in brackets), int8 .tflite size, bare LiteRT invoke "
        f"(median of 7 pass medians, {args.bench_runs} invokes in all, 1 thread, "
        f"ai-edge-litert {version('ai-edge-litert')}); "
        f"total {total_macs} MACs, {total_us:.1f} us"
    )
    lines += ["## Cost" if markdown else "Summary", "", title + ("." if markdown else ""), ""]
    lines += table(header, rows, markdown)

    header = ["exit", "float (Keras)", "int8 LiteRT", "int8 OpenVINO IR", "int8 OpenVINO (tflite)"]
    rows = [
        [
            f"exit {k}" if k < NUM_STAGES - 1 else "final",
            pct(info["acc_float"][k]),
            pct(info["acc_int8"][k]),
            pct(info["acc_ov_ir"][k]),
            pct(info["acc_ov_tflite"][k]),
        ]
        for k in range(NUM_STAGES)
    ]
    ee_acc, ee_counts = info["ee"]
    lines += [
        "",
        *(["## Accuracy", ""] if markdown else []),
        f"Test split ({len(data.y_test)} images), every exit evaluated on every image. int8 = the stages chained",
        "with the raw int8 carry handed over unchanged; logits dequantized, argmax.",
        "",
    ]
    lines += table(header, rows, markdown)
    lines += [
        "",
        f"With the placeholder thresholds (max_prob >= {PLACEHOLDER_THRESHOLD} at exits 0 and 1, int8 LiteRT):",
        f"accuracy {pct(ee_acc)}, exits taken {ee_counts[0]} / {ee_counts[1]} / {ee_counts[2]}.",
        "",
    ]

    header = ["stage", "tensor", "role", "shape", "scale", "zero point", "OpenVINO name"]
    rows = []
    for k, io_ in enumerate(ios):
        ovn = info["ov_names"][k]
        for role, d in (("input", io_.input), ("logits", io_.logits), ("carry", io_.carry)):
            if d is None:
                continue
            scale, zp = quant_of(d)
            rows.append(
                [f"stage{k}", d["name"], role, str([int(v) for v in d["shape"]]), f"{scale:.9g}", str(zp), ovn[role]]
            )
    lines += [
        "## Tensors and carry quantization" if markdown else "Tensors (all int8, per-tensor quantization)",
        "",
    ]
    lines += table(header, rows, markdown)
    lines += [""]
    for r in info["carry_rows"]:
        lines.append(
            f"* `{r['carry']}`: stage output (scale, zero point) {r['out']} == next stage input {r['in']}: "
            + ("identical, checked at build time" if r["equal"] else "DIFFERENT")
        )
    lines += [
        "  (ReLU6 carries that saturate on the calibration data: both sides calibrate to exactly [0, 6].)",
        "* OpenVINO IR (`stage<k>.xml/.bin`): `openvino.save_model(Core().read_model(stage<k>.tflite), ...,"
        " compress_to_fp16=False)`;",
        "  tensor names as in the table (read back from the IR).",
        f"* Model files: {info['tflite_bytes']} bytes of .tflite, {info['ir_bytes']} bytes of IR.",
        "",
    ]
    if markdown:
        lines += [
            "## Rebuild",
            "",
            "```sh",
            rebuild_command(info["seed"]),
            "```",
            "",
            "`--openvino-python` may be omitted when the training environment has `openvino`. Options:",
            f"`python scripts/build_early_exit.py --help`. Built with {info['versions']}.",
        ]
    return lines


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Train a 3-stage early-exit int8 CNN on the scikit-learn digits (upscaled to 32x32), "
            "distil its two exit heads from the final head, and write the edge_runtime early-exit "
            "bundle: one full-integer int8 .tflite and OpenVINO IR per stage, bundle.json, "
            "calibration/test splits and README.md."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR, help="bundle directory")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed for split, init, training")
    parser.add_argument("--epochs", type=int, default=15, help="backbone + final head epochs")
    parser.add_argument("--head-epochs", type=int, default=60, help="exit head (distillation) epochs")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3, help="backbone learning rate (Adam)")
    parser.add_argument("--head-lr", type=float, default=3e-3, help="exit head learning rate (Adam)")
    parser.add_argument("--temperature", type=float, default=4.0, help="distillation temperature")
    parser.add_argument("--alpha", type=float, default=0.7, help="weight of the KL term (rest: cross entropy)")
    parser.add_argument("--bench-runs", type=int, default=1000, help="LiteRT invokes timed per stage (median)")
    parser.add_argument(
        "--openvino-python",
        default=None,
        help="Python interpreter with openvino for the IR export (default: this one, if it has openvino)",
    )
    parser.add_argument("--date", type=iso_date, default=DEFAULT_DATE, help="build date written to README.md")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return build(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
