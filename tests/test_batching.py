"""Batch sizes (``load(..., batch=B)``) and dynamic batching across streams (``DynamicBatcher``),
on the real LiteRT and OpenVINO interpreters."""

from __future__ import annotations

import functools
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import edge_runtime as er
from edge_runtime.batching import DynamicBatcher, batch_sizes
from edge_runtime.errors import ArgumentError, InputError, ModelClosedError, ModelLoadError
from edge_runtime.tensors import random_tensor

ROOT = Path(__file__).resolve().parents[1]
MOTIONS = ROOT / "models" / "basicmotions_int8.tflite"  # carries a batch through
DIGITS = ROOT / "models" / "digits_cnn_int8.tflite"  # a Reshape hard-codes a batch of 1
BUNDLE = ROOT / "models" / "digits_early_exit"
MLPERF = ROOT.parent / "shared" / "models" / "mlperf_tiny"
DEVICES = ["litert:cpu", "openvino:CPU"]
LONG = 60e6  # us: a wait no test reaches (batches must fill, or be closed)


def samples(spec: er.TensorSpec, n: int) -> list[np.ndarray[Any, Any]]:
    one = er.TensorSpec(spec.name, (1, *spec.shape[1:]), spec.dtype, spec.quantization)
    return [random_tensor(one, seed) for seed in range(n)]


@pytest.mark.parametrize("device", DEVICES)
def test_batched_model_rows_equal_single_calls(device: str) -> None:
    with er.load_model(MOTIONS, device, threads=1) as one, er.load_model(MOTIONS, device, threads=1, batch=4) as four:
        assert four.inputs[0].shape == (4, *one.inputs[0].shape[1:])
        assert four.outputs[0].shape[0] == 4
        xs = samples(one.inputs[0], 4)
        rows = four.infer_raw(np.concatenate(xs))[0]
        for k, x in enumerate(xs):
            np.testing.assert_array_equal(rows[k : k + 1], one.infer_raw(x)[0])


@pytest.mark.skipif(not MLPERF.is_dir(), reason=f"{MLPERF} is absent")
@pytest.mark.parametrize("name", ["kws_ref_model.tflite", "pretrainedResnet_quant.tflite"])
def test_batched_mlperf_model_is_bit_exact_on_litert(name: str) -> None:
    path = MLPERF / name
    with (
        er.load_model(path, "litert:cpu", threads=1) as one,
        er.load_model(path, "litert:cpu", threads=1, batch=3) as three,
    ):
        xs = samples(one.inputs[0], 3)
        rows = three.infer_raw(np.concatenate(xs))[0]
        for k, x in enumerate(xs):
            np.testing.assert_array_equal(rows[k : k + 1], one.infer_raw(x)[0])


def test_a_model_that_cannot_carry_a_batch_is_refused_with_the_reason() -> None:
    """digits_cnn's Reshape targets (1, 512) in the .tflite: LiteRT cannot batch it. (OpenVINO's
    TFLite frontend reads that Reshape as (-1, 512) and takes any batch: tested there.)"""
    with pytest.raises(ModelLoadError) as info:
        er.load_model(DIGITS, "litert:cpu", batch=4)
    assert "batch of 4" in str(info.value)
    assert str(DIGITS) in str(info.value)


@pytest.mark.parametrize("bad", [0, -1, 2.0, "4", True])
def test_a_bad_batch_is_an_argument_error(bad: Any) -> None:
    with pytest.raises(ArgumentError, match="batch"):
        er.load(MOTIONS, "litert:cpu", batch=bad)


def test_a_bundle_takes_no_batch() -> None:
    with pytest.raises(ArgumentError, match="one window at a time"):
        er.load(BUNDLE, "litert:cpu", batch=2)


def test_batch_sizes() -> None:
    assert batch_sizes(1) == (1,)
    assert batch_sizes(4) == (1, 2, 4)
    assert batch_sizes(6) == (1, 2, 4, 6)
    with pytest.raises(ArgumentError):
        batch_sizes(0)


@pytest.mark.parametrize(
    "bad",
    [{"max_batch": 0}, {"max_wait_us": -1}, {"max_wait_us": "1"}, {"sizes": [2, 4]}, {"batch": 4}, {"workers": 0}],
)
def test_bad_batcher_options_are_argument_errors(bad: dict[str, Any]) -> None:
    with pytest.raises(ArgumentError):
        DynamicBatcher(MOTIONS, "litert:cpu", **bad)


def test_a_batcher_refuses_a_model_without_a_batch_dimension() -> None:
    with pytest.raises(ModelLoadError, match="batch of 2"):
        DynamicBatcher(DIGITS, "litert:cpu", max_batch=2)
    with pytest.raises(ModelLoadError, match=r"max_batch=4: the batcher also loads a batch of 2"):
        DynamicBatcher(DIGITS, "litert:cpu", max_batch=4)


def test_a_misspelt_option_names_the_batcher() -> None:
    with pytest.raises(ArgumentError, match=r"DynamicBatcher got unknown option.*max_wiat_us"):
        DynamicBatcher(MOTIONS, "litert:cpu", max_wiat_us=10)
    with pytest.raises(ArgumentError, match="max_batch must be"):
        DynamicBatcher(MOTIONS, "litert:cpu", max_batch=0)


def record(into: list[int], i: int, _fut: Future[Any]) -> None:
    into.append(i)


def run_streams(b: DynamicBatcher, per_stream: list[list[np.ndarray[Any, Any]]], depth: int = 1) -> list[list[Any]]:
    """One thread per stream, each submitting its samples (``depth`` pending at most) and
    recording, from the futures' done-callbacks, the order its results arrive in."""
    results: list[list[Any]] = [[] for _ in per_stream]
    arrived: list[list[int]] = [[] for _ in per_stream]
    errors: list[BaseException] = []

    def stream(k: int) -> None:
        try:
            window: list[Future[Any]] = []
            for i, x in enumerate(per_stream[k]):
                fut = b.submit_raw(x)
                fut.add_done_callback(functools.partial(record, arrived[k], i))
                window.append(fut)
                if len(window) >= depth:
                    results[k].append(window.pop(0).result(timeout=30))
            results[k].extend(f.result(timeout=30) for f in window)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=stream, args=(k,)) for k in range(len(per_stream))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for k, order in enumerate(arrived):
        assert order == list(range(len(per_stream[k]))), f"stream {k}'s results came out of order: {order}"
    return results


@pytest.mark.parametrize("device", DEVICES)
def test_four_streams_fill_batches_of_four_and_get_their_own_results(device: str) -> None:
    rounds = 5
    with DynamicBatcher(MOTIONS, device, max_batch=4, max_wait_us=LONG, threads=1, workers=1) as b:
        assert b.sizes == (1, 2, 4)
        xs = samples(b.inputs[0], 4 * rounds)
        per_stream = [xs[k::4] for k in range(4)]
        results = run_streams(b, per_stream)  # each stream waits for its result: 4 per batch
        assert dict(b.stats.by_fill) == {4: rounds}
        assert b.stats.samples == 4 * rounds and b.stats.padded_rows == 0
        with er.load_model(MOTIONS, device, threads=1) as one:
            for k, stream in enumerate(per_stream):
                for x, got in zip(stream, results[k]):
                    np.testing.assert_array_equal(got[0], one.infer_raw(x)[0])


@pytest.mark.parametrize("workers", [1, 2])
def test_pipelined_streams_keep_their_order(workers: int) -> None:
    """Four streams with three samples pending each: batches taken by several threads at once
    (one model per size and worker) settle in the order they were taken."""
    with DynamicBatcher(MOTIONS, "litert:cpu", max_batch=4, max_wait_us=200, threads=1, workers=workers) as b:
        xs = samples(b.inputs[0], 4 * 30)
        per_stream = [xs[k::4] for k in range(4)]
        results = run_streams(b, per_stream, depth=3)
        with er.load_model(MOTIONS, "litert:cpu", threads=1) as one:
            for k, stream in enumerate(per_stream):
                for x, got in zip(stream, results[k]):
                    np.testing.assert_array_equal(got[0], one.infer_raw(x)[0])
        assert b.stats.samples == len(xs)


def test_a_stalled_stream_holds_no_batch_hostage() -> None:
    """One stream sends while three others stay silent: each sample runs once its wait is over,
    on its own (a batch of one), and the float result is infer's."""
    with (
        DynamicBatcher(MOTIONS, "litert:cpu", max_batch=4, max_wait_us=2000, threads=1) as b,
        er.load_model(MOTIONS, "litert:cpu", threads=1) as one,
    ):
        xs = samples(b.inputs[0], 3)
        for x in xs:
            got = b.submit(x).result(timeout=30)
            np.testing.assert_array_equal(got[0], one.infer(x)[0])
        assert dict(b.stats.by_fill) == {1: 3}


def test_a_partial_batch_runs_padded_on_the_next_size() -> None:
    with DynamicBatcher(MOTIONS, "litert:cpu", max_batch=4, max_wait_us=LONG, threads=1) as b:
        xs = samples(b.inputs[0], 3)
        futs = [b.submit_raw(x) for x in xs]
        assert not any(f.done() for f in futs)  # 3 of 4: waiting for a fourth
        b.close()  # closing runs what was submitted
        with er.load_model(MOTIONS, "litert:cpu", threads=1) as one:
            for x, f in zip(xs, futs):
                np.testing.assert_array_equal(f.result(timeout=30)[0], one.infer_raw(x)[0])
        assert dict(b.stats.by_fill) == {3: 1} and b.stats.padded_rows == 1
        with pytest.raises(ModelClosedError):
            b.submit(xs[0])


def test_zero_wait_runs_every_sample_alone_and_classify_names_the_class() -> None:
    with (
        DynamicBatcher(MOTIONS, "litert:cpu", max_batch=4, max_wait_us=0, threads=1) as b,
        er.load_model(MOTIONS, "litert:cpu", threads=1) as one,
    ):
        xs = samples(b.inputs[0], 3)
        for x in xs:
            c = b.submit_classify(x).result(timeout=30)
            assert c.label == one.classify(x).label
        assert dict(b.stats.by_fill) == {1: 3}


def test_a_bad_input_fails_at_submit_and_the_others_run() -> None:
    with DynamicBatcher(MOTIONS, "litert:cpu", max_batch=2, max_wait_us=LONG, threads=1) as b:
        xs = samples(b.inputs[0], 2)
        first = b.submit_raw(xs[0])
        with pytest.raises(InputError):
            b.submit_raw(np.zeros((1, 3), np.float32))
        second = b.submit_raw(xs[1])
        assert first.result(timeout=30)[0].shape == second.result(timeout=30)[0].shape == b.outputs[0].shape
        assert dict(b.stats.by_fill) == {2: 1}


def test_a_failing_batch_runs_its_samples_alone_and_a_failing_sample_gets_its_own_error() -> None:
    with (
        DynamicBatcher(MOTIONS, "litert:cpu", max_batch=2, max_wait_us=LONG, threads=1, workers=1) as b,
        er.load_model(MOTIONS, "litert:cpu", threads=1) as one,
    ):
        xs = samples(b.inputs[0], 2)
        four = b._free[2].get()
        four.close()  # the batch-2 model fails for real (its session is closed)
        b._free[2].put(four)
        futs = [b.submit_raw(x) for x in xs]
        for x, f in zip(xs, futs):
            np.testing.assert_array_equal(f.result(timeout=30)[0], one.infer_raw(x)[0])
        assert b.stats.failed_batches == 1
        single = b._free[1].get()  # the one-by-one path fails too: a closed batch-1 model in its place
        broken = er.load_model(MOTIONS, "litert:cpu", threads=1)
        broken.close()
        b._free[1].put(broken)
        futs = [b.submit_raw(x) for x in xs]
        for f in futs:
            with pytest.raises(ModelClosedError):
                f.result(timeout=30)
        assert b._free[1].get() is broken
        b._free[1].put(single)
        futs = [b.submit_raw(x) for x in xs]  # the batcher lives on: requests after the failure run
        for x, f in zip(xs, futs):
            np.testing.assert_array_equal(f.result(timeout=30)[0], one.infer_raw(x)[0])
        assert b.stats.failed_batches == 3


def test_an_interrupt_in_the_submitting_thread_leaves_the_batcher_working() -> None:
    """Ctrl-C while the submitting thread runs a batch (a finish that raises KeyboardInterrupt
    stands in for the signal): the interrupt reaches the caller, the batch's other futures
    settle with an InferenceError, the model goes back, and later batches still run in turn."""
    from edge_runtime.errors import InferenceError

    with (
        DynamicBatcher(MOTIONS, "litert:cpu", max_batch=2, max_wait_us=LONG, threads=1, workers=1) as b,
        er.load_model(MOTIONS, "litert:cpu", threads=1) as one,
    ):
        xs = samples(b.inputs[0], 4)
        first = b.submit_raw(xs[0])

        def interrupted(raw: Any) -> Any:
            raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            b._submit(xs[1], interrupted)  # fills the batch: this thread runs it
        with pytest.raises(InferenceError, match="interrupted"):
            first.result(timeout=30)
        futs = [b.submit_raw(x) for x in xs[2:]]
        for x, f in zip(xs[2:], futs):
            np.testing.assert_array_equal(f.result(timeout=30)[0], one.infer_raw(x)[0])
