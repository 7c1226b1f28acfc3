"""``runner.submit``: futures of ``infer``'s results, on real interpreters (LiteRT and OpenVINO),
for a plain model, an early-exit bundle and an isolated model. No timing is asserted."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import CancelledError, Future
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from conftest import BACKENDS, MODELS, backend_available

import edge_runtime as er
from edge_runtime.errors import ArgumentError, InferenceError, InputError, ModelClosedError
from edge_runtime.futures import map_ordered
from edge_runtime.tensors import dequantize

DEVICE = {"litert": "litert:cpu", "openvino": "openvino:CPU"}
MODEL = MODELS / "basicmotions_int8.tflite"
BUNDLE = MODELS / "digits_early_exit"


def windows(n: int) -> list[npt.NDArray[np.float32]]:
    """``n`` inputs for the basicmotions model: its test windows, then noise (deterministic)."""
    x = np.load(MODELS / "basicmotions_int8_test.npz")["x"].astype(np.float32)
    rng = np.random.default_rng(0)
    out = [x[i : i + 1] for i in range(len(x))]
    while len(out) < n:
        out.append(rng.normal(size=(1, *x.shape[1:])).astype(np.float32))
    return out[:n]


def same(a: list[npt.NDArray[Any]], b: list[npt.NDArray[Any]]) -> bool:
    return len(a) == len(b) and all(p.dtype == q.dtype and np.array_equal(p, q) for p, q in zip(a, b))


KINDS = [
    pytest.param((b, h), id=f"{b}-{h}", marks=pytest.mark.skipif(not backend_available(b), reason=f"{b} not installed"))
    for b, h in (("litert", "LATENCY"), ("openvino", "LATENCY"), ("openvino", "THROUGHPUT"))
]


@pytest.fixture(params=KINDS)
def model(request: pytest.FixtureRequest) -> Iterator[er.Model]:
    backend, hint = request.param
    with er.load_model(MODEL, DEVICE[backend], performance_hint=hint) as m:
        yield m


def test_submit_is_bit_identical_to_infer(model: er.Model) -> None:
    xs = windows(40)
    expected = [model.infer(x) for x in xs]
    futures = [model.submit(x) for x in xs]
    assert all(isinstance(f, Future) for f in futures)
    assert all(same(f.result(timeout=30), e) for f, e in zip(futures, expected))
    c = model.submit_classify(xs[0]).result(timeout=30)
    ref = model.classify(xs[0])
    assert (c.label, c.label_index) == (ref.label, ref.label_index)
    assert np.array_equal(c.scores, ref.scores)


def test_200_concurrent_submits_come_back_in_order(model: er.Model) -> None:
    xs = windows(200)
    expected = [model.infer(x) for x in xs]
    results: dict[int, list[Future[list[npt.NDArray[np.float32]]]]] = {}

    def producer(k: int) -> None:  # two threads submitting at once
        results[k] = [model.submit(x) for x in xs[k::2]]

    threads = [threading.Thread(target=producer, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    got = [None] * len(xs)
    for k in range(2):
        for i, f in zip(range(k, len(xs), 2), results[k]):
            got[i] = f.result(timeout=30)  # type: ignore[call-overload]
    assert all(same(g, e) for g, e in zip(got, expected))  # type: ignore[arg-type]
    assert all(same(g, e) for g, e in zip(map_ordered(model, xs, in_flight=8), expected))


def test_the_input_is_copied_at_submit(model: er.Model) -> None:
    xs = windows(2)
    expected = model.infer(xs[0])
    x = xs[0].copy()
    f = model.submit(x)
    x[...] = xs[1]  # changed at once: the request has its own copy
    assert same(f.result(timeout=30), expected)


def test_a_bad_input_raises_at_submit(model: er.Model) -> None:
    with pytest.raises(InputError, match="shape"):
        model.submit(np.zeros((2, 3), np.float32))
    with pytest.raises(InputError, match="dtype"):
        model.submit(np.zeros(model.inputs[0].shape, np.int32))
    with pytest.raises(InputError, match="NaN"):
        model.submit(np.full(model.inputs[0].shape, np.nan, np.float32))
    assert same(model.submit(windows(1)[0]).result(timeout=30), model.infer(windows(1)[0]))


def test_a_failing_request_fails_only_its_own_future(model: er.Model, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fault injected in the step each worker runs after inference (dequantizing the outputs):
    the routing of one request's error to its own future, on the backend's own worker threads."""
    xs = windows(30)
    expected = [model.infer(x) for x in xs]
    real = dequantize
    calls = 0
    lock = threading.Lock()

    def faulty(q: npt.NDArray[Any], spec: Any) -> npt.NDArray[np.float32]:
        nonlocal calls
        with lock:
            calls += 1
            n = calls
        if n == 7:
            raise RuntimeError("injected fault")
        return real(q, spec)

    monkeypatch.setattr("edge_runtime.model.dequantize", faulty)
    futures = [model.submit(x) for x in xs]
    failed = []
    for i, (f, e) in enumerate(zip(futures, expected)):
        exc = f.exception(timeout=30)
        if exc is None:
            assert same(f.result(), e)
        else:
            failed.append(i)
            assert isinstance(exc, InferenceError)
            assert "injected fault" in str(exc) and isinstance(exc.__cause__, RuntimeError)
            assert exc.path == str(MODEL)
    assert len(failed) == 1


def test_close_with_pending_work_returns_and_submit_after_close_raises(model: er.Model) -> None:
    xs = windows(64)
    futures = [model.submit(x) for x in xs]
    model.close()
    assert all(f.done() for f in futures)
    for f in futures:  # each one finished or was cancelled; none hangs
        try:
            assert len(f.result(timeout=0)) == len(model.outputs)
        except CancelledError:
            pass
    with pytest.raises(ModelClosedError):
        model.submit(xs[0])
    model.close()  # idempotent


def test_start_workers_sets_the_pool_size() -> None:
    with er.load_model(MODEL, "litert:cpu", threads=1) as m:
        pool = m.start_workers(3)
        assert pool.workers == 3 and pool.parallel
        assert m.start_workers() is pool
        with pytest.raises(ArgumentError):
            m.start_workers(2)
        xs = windows(12)
        assert all(same(m.submit(x).result(timeout=30), m.infer(x)) for x in xs)
    with pytest.raises(ArgumentError), er.load_model(MODEL, "litert:cpu") as m:
        m.start_workers(0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bundle_submit_is_identical_to_infer_and_classify(backend: str) -> None:
    x = np.load(BUNDLE / "test.npz")["x"][:30].astype(np.float32)
    with er.load(BUNDLE, DEVICE[backend]) as b:
        assert isinstance(b, er.Runner)
        expected = [b.infer(x[i : i + 1]) for i in range(len(x))]
        classes = [b.classify(x[i : i + 1]) for i in range(len(x))]
        futures = [b.submit(x[i : i + 1]) for i in range(len(x))]
        cfutures = [b.submit_classify(x[i : i + 1]) for i in range(len(x))]
        assert all(same(f.result(timeout=30), e) for f, e in zip(futures, expected))
        for f, c in zip(cfutures, classes):
            got = f.result(timeout=30)
            assert (got.label, got.exit_index) == (c.label, c.exit_index)
            assert np.array_equal(got.scores, c.scores)
        with pytest.raises(InputError):
            b.submit(np.zeros((1, 3), np.float32))
        pending = [b.submit(x[i : i + 1]) for i in range(len(x))]
    assert all(f.done() for f in pending)
    with pytest.raises(ModelClosedError):
        b.submit(x[:1])


def test_isolated_submit_runs_on_one_worker() -> None:
    from edge_runtime.backends.isolated import unsupported_reason

    if unsupported_reason():
        pytest.skip(str(unsupported_reason()))
    xs = windows(10)
    with er.load_model(MODEL, "litert:cpu") as ref, er.load_model(MODEL, "litert:cpu", isolate=True) as iso:
        futures = [iso.submit(x) for x in xs]
        assert all(same(f.result(timeout=30), ref.infer(x)) for f, x in zip(futures, xs))
        assert iso.start_workers().workers == 1 and not iso.start_workers().parallel
