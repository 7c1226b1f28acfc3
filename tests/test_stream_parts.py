"""Windows, preprocessing and the queue: the zero-copy parts, on their own."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

import edge_runtime as er
from edge_runtime.stream.preprocess import Preprocess, Preprocessor
from edge_runtime.stream.queue import BLOCK, DROP_OLDEST, WindowQueue
from edge_runtime.stream.window import SlidingWindow


def ramp(start: int, n: int, channels: int) -> np.ndarray:
    return np.arange(start * channels, (start + n) * channels, dtype=np.float32).reshape(n, channels)


@pytest.mark.parametrize(("size", "hop", "frame"), [(100, 100, 10), (100, 25, 7), (50, 10, 64), (8, 3, 1), (20, 40, 9)])
def test_windows_are_the_right_samples_as_views(size: int, hop: int, frame: int) -> None:
    ch = 3
    w = SlidingWindow(size, hop, ch, np.float32)
    got = []
    for start in range(0, 600, frame):
        for view, ts in w.push(ramp(start, frame, ch), timestamp_us=start * 1000, interval_us=1000):
            assert np.shares_memory(view, w._buf), "a window is a view of the ring, not a copy"
            assert not view.flags.writeable
            got.append((view[0, 0] // ch, view[-1, 0] // ch, ts))
    total = (600 // frame) * frame if 600 % frame == 0 else (600 // frame + 1) * frame
    expected = [(e - size, e - 1, (e - 1) * 1000) for e in range(size, total + 1, hop)]
    assert got == expected


def test_window_reset_after_a_gap_needs_a_full_window_again() -> None:
    w = SlidingWindow(10, 5, 1, np.float32)
    assert list(w.push(ramp(0, 8, 1))) == []
    w.reset()
    assert list(w.push(ramp(8, 9, 1))) == []
    ((view, _),) = list(w.push(ramp(17, 1, 1)))
    np.testing.assert_array_equal(view[:, 0], np.arange(8, 18))


def test_window_rejects_wrong_channel_count() -> None:
    w = SlidingWindow(10, 5, 3, np.float32)
    with pytest.raises(ValueError, match="expected \\(samples, 3\\)"):
        list(w.push(np.zeros((4, 2), np.float32)))


def _spec(dtype: type = np.int8, scale: float = 0.1044, zp: int = -31) -> er.TensorSpec:
    return er.TensorSpec("x", (1, 100, 6), np.dtype(dtype), er.Quantization((scale,), (zp,)))


@pytest.mark.parametrize("src_dtype", [np.float32, np.int16, np.float64])
@pytest.mark.parametrize(("dtype", "zp"), [(np.int8, -31), (np.uint8, 100)])
def test_preprocess_writes_exactly_the_quantized_values(src_dtype: type, dtype: type, zp: int) -> None:
    spec = _spec(dtype, zp=zp)
    mean = np.array([1.0, -2.0, 0.5, 0.0, 3.0, -1.0])
    std = np.array([2.0, 1.0, 0.5, 4.0, 1.5, 3.0])
    pre = Preprocessor(Preprocess(offset=tuple(mean), scale=tuple(std)), 100, 6, spec, src_dtype)
    rng = np.random.default_rng(4)
    for k in range(20):
        x = (rng.standard_normal((100, 6)) * [1, 5, 50, 500, 1, 2]).astype(src_dtype)
        dst = np.zeros(spec.shape, spec.dtype)
        pre(x, dst)
        real = ((x.astype(np.float32) - mean.astype(np.float32)) / std.astype(np.float32))[None]
        expected = er.quantize(real, spec)
        # The fused affine map may round a value lying within float error of a half step
        # the other way: at most one step, and rarely.
        diff = np.abs(dst.astype(int) - expected.astype(int))
        assert diff.max() <= 1 and diff.mean() < 0.01, (k, diff.max(), diff.mean())


def test_preprocess_selects_channels_and_checks_shapes() -> None:
    spec = er.TensorSpec("x", (1, 10, 2), np.dtype(np.int8), er.Quantization((1.0,), (0,)))
    pre = Preprocessor(Preprocess(channels=(2, 0)), 10, 3, spec)
    x = np.arange(30, dtype=np.float32).reshape(10, 3)
    dst = np.zeros(spec.shape, np.int8)
    pre(x, dst)
    np.testing.assert_array_equal(dst[0], x[:, [2, 0]])
    with pytest.raises(er.InputError, match="does not fit input"):
        Preprocessor(Preprocess(), 10, 3, spec)
    with pytest.raises(er.InputError, match=r"outside 0\.\.2"):
        Preprocessor(Preprocess(channels=(3, 0)), 10, 3, spec)
    with pytest.raises(er.InputError, match="has 3 values for 2 channels"):
        Preprocessor(Preprocess(channels=(2, 0), scale=(1.0, 2.0, 3.0)), 10, 3, spec)


def test_preprocess_from_sidecar_matches_the_model_readme() -> None:
    from conftest import MODELS

    pre = Preprocess.from_sidecar(MODELS / "basicmotions_int8.json")
    assert len(pre.offset) == len(pre.scale) == 6 and all(s > 0 for s in pre.scale)


def test_queue_drop_oldest_counts_every_drop_and_keeps_the_newest() -> None:
    q = WindowQueue(3, 2, 1, np.float32, DROP_OLDEST)
    for i in range(10):
        assert q.put(np.full((2, 1), i, np.float32), 0, i, i, 0)
    assert q.dropped == 7 and len(q) == 3
    got = []
    while (slot := q.get(0)) is not None:
        got.append(int(slot.data[0, 0]))
        q.release(slot)
    assert got == [7, 8, 9]


def test_queue_block_waits_for_the_consumer() -> None:
    q = WindowQueue(1, 2, 1, np.float32, BLOCK)
    assert q.put(np.zeros((2, 1), np.float32), 0, 0, 0, 0)
    assert not q.put(np.zeros((2, 1), np.float32), 0, 1, 0, 0, timeout=0.05), "full: times out"
    slot = q.get(0)
    assert slot is not None

    def release_later() -> None:
        time.sleep(0.05)
        q.release(slot)

    threading.Thread(target=release_later).start()
    t0 = time.monotonic()
    assert q.put(np.ones((2, 1), np.float32), 0, 2, 0, 0, timeout=2)
    assert time.monotonic() - t0 >= 0.04 and q.dropped == 0


def test_queue_close_drains_then_stops() -> None:
    q = WindowQueue(2, 1, 1, np.float32)
    q.put(np.zeros((1, 1), np.float32), 0, 0, 0, 0)
    q.close()
    assert q.get(0.1) is not None
    assert q.get(0.1) is None and q.get(0) is None
    assert not q.put(np.zeros((1, 1), np.float32), 0, 1, 0, 0)


def test_window_capacity_must_hold_a_window_and_a_hop() -> None:
    with pytest.raises(ValueError, match="capacity 3 must hold a window \\(2\\) and a hop \\(5\\)"):
        SlidingWindow(2, 5, 1, np.float32, capacity=3)
    w = SlidingWindow(2, 5, 1, np.float32, capacity=5)
    got = [v[:, 0].tolist() for v, _ in w.push(ramp(0, 20, 1))]
    assert got == [[0.0, 1.0], [5.0, 6.0], [10.0, 11.0], [15.0, 16.0]]


def test_decoded_payloads_are_read_only() -> None:
    from edge_runtime.stream.codec import FrameDecoder, encode_frame, make_frame

    (frame,) = list(FrameDecoder().feed(encode_frame(make_frame(np.ones((2, 3), np.int16)))))
    assert frame.payload.readonly and not frame.values().flags.writeable
