"""Windows, preprocessing and the queue: the zero-copy parts, on their own."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import MODELS

import edge_runtime as er
from edge_runtime.errors import ArgumentError, SourceError
from edge_runtime.stream import sources
from edge_runtime.stream.codec import Frame
from edge_runtime.stream.preprocess import Preprocess, Preprocessor
from edge_runtime.stream.queue import BLOCK, DROP_OLDEST, WindowQueue
from edge_runtime.stream.sources import (
    FILE_KEYS,
    SYNTHETIC_KEYS,
    FileSource,
    SyntheticSource,
    open_source,
)
from edge_runtime.stream.window import SlidingWindow

RECORDING = MODELS / "basicmotions_recording.csv"


def ramp(start: int, n: int, channels: int) -> np.ndarray:
    return np.arange(start * channels, (start + n) * channels, dtype=np.float32).reshape(n, channels)


def windows(w: SlidingWindow, values: np.ndarray, timestamp_us: int = 0, interval_us: int = 0) -> list[Any]:
    """``(copy of the window, last timestamp)`` for each window ``values`` complete."""
    got: list[Any] = []
    n = w.push(values, timestamp_us, interval_us, on_window=lambda view, ts: got.append((view.copy(), ts)))
    assert n == len(got)
    return got


@pytest.mark.parametrize(("size", "hop", "frame"), [(100, 100, 10), (100, 25, 7), (50, 10, 64), (8, 3, 1), (20, 40, 9)])
def test_windows_are_the_right_samples_as_views(size: int, hop: int, frame: int) -> None:
    ch = 3
    w = SlidingWindow(size, hop, ch, np.float32)
    got = []

    def check(view: np.ndarray, ts: int) -> None:
        assert np.shares_memory(view, w._buf), "a window is a view of the ring, not a copy"
        assert not view.flags.writeable
        got.append((view[0, 0] // ch, view[-1, 0] // ch, ts))

    for start in range(0, 600, frame):
        w.push(ramp(start, frame, ch), timestamp_us=start * 1000, interval_us=1000, on_window=check)
    total = (600 // frame) * frame if 600 % frame == 0 else (600 // frame + 1) * frame
    expected = [(e - size, e - 1, (e - 1) * 1000) for e in range(size, total + 1, hop)]
    assert got == expected


def test_window_reset_after_a_gap_needs_a_full_window_again() -> None:
    w = SlidingWindow(10, 5, 1, np.float32)
    assert windows(w, ramp(0, 8, 1)) == []
    w.reset()
    assert windows(w, ramp(8, 9, 1)) == []
    ((view, _),) = windows(w, ramp(17, 1, 1))
    np.testing.assert_array_equal(view[:, 0], np.arange(8, 18))


def test_window_rejects_wrong_channel_count() -> None:
    w = SlidingWindow(10, 5, 3, np.float32)
    with pytest.raises(ArgumentError, match="expected \\(samples, 3\\)"):
        windows(w, np.zeros((4, 2), np.float32))
    with pytest.raises(ArgumentError, match="window size, hop and channels must be >= 1"):
        SlidingWindow(0, 5, 3, np.float32)


def test_push_writes_every_sample_whatever_the_callback_does() -> None:
    w = SlidingWindow(4, 2, 1, np.float32)
    # A caller that keeps nothing still gets every sample written and every window counted.
    assert w.push(ramp(0, 9, 1), on_window=lambda view, ts: None) == 3
    assert (w.count, w.windows) == (9, 3)
    assert [v[:, 0].tolist() for v, _ in windows(w, ramp(9, 1, 1))] == [[6.0, 7.0, 8.0, 9.0]]


def test_an_exception_in_on_window_stops_after_that_window() -> None:
    w = SlidingWindow(4, 2, 1, np.float32)

    def boom(view: np.ndarray, ts: int) -> None:
        raise KeyError("user code")

    with pytest.raises(KeyError):
        w.push(ramp(0, 9, 1), on_window=boom)
    assert (w.count, w.windows) == (4, 1)  # written up to the window's last sample, no further
    assert [v[:, 0].tolist() for v, _ in windows(w, ramp(4, 2, 1))] == [[2.0, 3.0, 4.0, 5.0]]


def test_push_from_inside_on_window_is_refused() -> None:
    w = SlidingWindow(2, 2, 1, np.float32)
    with pytest.raises(er.StreamError, match="inside its own on_window"):
        w.push(ramp(0, 2, 1), on_window=lambda view, ts: w.push(ramp(2, 2, 1), on_window=lambda v, t: None))
    assert len(windows(w, ramp(2, 2, 1))) == 1


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
        x: np.ndarray[Any, Any] = (rng.standard_normal((100, 6)) * [1, 5, 50, 500, 1, 2]).astype(src_dtype)
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
    started, returned = threading.Event(), threading.Event()
    result: list[bool] = []

    def produce() -> None:
        started.set()
        result.append(q.put(np.ones((2, 1), np.float32), 0, 2, 0, 0, timeout=60))  # longer than the test waits
        returned.set()

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    assert started.wait(10)
    assert not returned.wait(0.05), "put returned while the consumer held every slot"
    q.release(slot)
    assert returned.wait(10), "put still waiting after the consumer released a slot"
    producer.join(10)
    assert result == [True] and q.dropped == 0
    queued = q.get(0)
    assert queued is not None and queued.seq == 2 and queued.data[0, 0] == 1, "the blocked window, not a lost one"


def test_queue_rejects_an_unknown_policy_and_no_slots() -> None:
    with pytest.raises(ArgumentError, match="unknown queue policy 'newest'"):
        WindowQueue(2, 1, 1, np.float32, "newest")
    with pytest.raises(ArgumentError, match="at least one slot"):
        WindowQueue(0, 1, 1, np.float32)


def test_queue_close_drains_then_stops() -> None:
    q = WindowQueue(2, 1, 1, np.float32)
    q.put(np.zeros((1, 1), np.float32), 0, 0, 0, 0)
    q.close()
    assert q.get(0.1) is not None
    assert q.get(0.1) is None and q.get(0) is None
    assert not q.put(np.zeros((1, 1), np.float32), 0, 1, 0, 0)


def test_window_capacity_must_hold_a_window_and_a_hop() -> None:
    with pytest.raises(ArgumentError, match="capacity 3 must hold a window \\(2\\) and a hop \\(5\\)"):
        SlidingWindow(2, 5, 1, np.float32, capacity=3)
    w = SlidingWindow(2, 5, 1, np.float32, capacity=5)
    got = [v[:, 0].tolist() for v, _ in windows(w, ramp(0, 20, 1))]
    assert got == [[0.0, 1.0], [5.0, 6.0], [10.0, 11.0], [15.0, 16.0]]


def test_decoded_payloads_are_read_only() -> None:
    from edge_runtime.stream.codec import FrameDecoder, encode_frame, make_frame

    seen: list[bool] = []

    def check(frame: Frame) -> None:
        payload = frame.payload
        seen.append(isinstance(payload, memoryview) and payload.readonly and not frame.values().flags.writeable)

    assert FrameDecoder().feed(encode_frame(make_frame(np.ones((2, 3), np.int16))), on_frame=check) == 1
    assert seen == [True]


# --- source URLs: one name per thing, strict keys and values ---------------------------------------------


@pytest.mark.parametrize(
    ("url", "key", "known"),
    [
        ("synthetic:sine?chanels=6", "chanels", SYNTHETIC_KEYS),
        ("synthetic:ramp?speed=max&sped=2", "sped", SYNTHETIC_KEYS),
        ("synthetic:sine?baud=9600", "baud", SYNTHETIC_KEYS),
        (f"file:{RECORDING}?frames=10", "frames", FILE_KEYS),
        (f"file:{RECORDING}?speed=max&count=3", "count", FILE_KEYS),
        ("file:/nonexistent/rec.csv?bogus=1", "bogus", FILE_KEYS),  # a usage error before the file is read
    ],
)
def test_an_unknown_url_key_is_an_argument_error_listing_the_known_keys(
    url: str, key: str, known: tuple[str, ...]
) -> None:
    with pytest.raises(ArgumentError) as info:
        open_source(url)
    message = str(info.value)
    assert f"unknown key {key!r} in {url!r}" in message
    assert "known keys: " in message and all(k in message for k in known)
    assert "frame_samples (or frame)" in message and "stream_id (or stream)" in message
    assert isinstance(info.value, ValueError) and not isinstance(info.value, SourceError)


def test_an_unknown_key_suggests_the_close_one() -> None:
    with pytest.raises(ArgumentError, match="did you mean channels"):
        open_source("synthetic:sine?chanels=6")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("synthetic:sine?channels=abc", "channels='abc' in 'synthetic:sine?channels=abc' is not a whole number"),
        ("synthetic:sine?channels=", "channels='' in 'synthetic:sine?channels=' is not a whole number"),
        ("synthetic:sine?rate=0", "rate='0' in 'synthetic:sine?rate=0' must be > 0"),
        ("synthetic:sine?rate=-5", "rate='-5' in 'synthetic:sine?rate=-5' must be > 0"),
        ("synthetic:sine?rate=inf", "is not a finite number"),
        ("synthetic:sine?freq=nan", "is not a finite number"),
        ("synthetic:sine?speed=fast", "speed='fast' in 'synthetic:sine?speed=fast' must be max or a number > 0"),
        ("synthetic:sine?speed=0", "speed='0'"),
        (
            "synthetic:sine?dtype=float64",
            "dtype='float64' in 'synthetic:sine?dtype=float64': expected float32 or int16",
        ),
        ("synthetic:sine?frame_samples=0", "frame_samples='0'"),
        ("synthetic:sine?frame=0", "frame_samples='0'"),
        ("synthetic:sine?count=2.5", "count='2.5' in 'synthetic:sine?count=2.5' is not a whole number"),
        ("synthetic:sine?noise=-1", "noise='-1' in 'synthetic:sine?noise=-1' must be >= 0"),
        ("synthetic:sine?stream_id=-1", "must be >= 0"),
        ("synthetic:square", "unknown synthetic signal 'square'"),
        ("synthetic:sine?channels=3&channels=4", "channels given twice"),
        ("synthetic:sine?frame=10&frame_samples=20", "frame_samples given twice"),
        (f"file:{RECORDING}?speed=fast", "speed='fast'"),
        (f"file:{RECORDING}?speed=-2", "speed='-2'"),
        (f"file:{RECORDING}?rate=0", "rate='0'"),
        (f"file:{RECORDING}?frame_samples=x", "frame_samples='x'"),
        (f"file:{RECORDING}?stream=-1", "stream_id='-1'"),
        (f"file:{RECORDING}?loop=maybe", "loop='maybe'"),
    ],
)
def test_a_bad_url_value_is_an_argument_error(url: str, message: str) -> None:
    with pytest.raises(ArgumentError) as info:
        open_source(url)
    assert message in str(info.value)
    assert isinstance(info.value, ValueError) and not isinstance(info.value, SourceError)


def test_a_missing_recording_is_a_source_error_not_a_usage_error() -> None:
    with pytest.raises(SourceError, match="recording not found"):
        open_source("file:/nonexistent/rec.csv?speed=max")


def _frames(source: Any) -> list[tuple[int, int, int, int, int]]:
    """(stream_id, seq, samples, timestamp_us, interval_us) of every frame ``source`` gives."""
    out: list[tuple[int, int, int, int, int]] = []

    def keep(frame: Frame, arrival_ns: int) -> None:
        out.append((frame.stream_id, frame.seq, frame.samples, frame.timestamp_us, frame.interval_us))

    source.run(keep, threading.Event())
    return out


def test_older_key_spellings_still_work() -> None:
    old = open_source("synthetic:ramp?frame=7&stream=3&count=4&speed=max")
    new = open_source("synthetic:ramp?frame_samples=7&stream_id=3&count=4&speed=max")
    assert isinstance(old, SyntheticSource) and isinstance(new, SyntheticSource)
    assert old.frame_samples == new.frame_samples == 7 and old.stream_id == new.stream_id == 3
    assert _frames(old) == _frames(new) == [(3, i, 7, i * 7 * 10_000, 10_000) for i in range(4)]
    both = open_source("synthetic:ramp?frame=7&frame_samples=7")  # the same value under both names: fine
    assert isinstance(both, SyntheticSource) and both.frame_samples == 7

    rec = FileSource(f"file:{RECORDING}?frame=25&stream=2&speed=max")
    assert rec.frame_samples == 25 and rec.stream_id == 2 and rec.speed is None
    frames = _frames(rec)
    assert len(frames) == len(rec.values) // 25 and {f[0] for f in frames} == {2}


def test_file_source_names_and_units() -> None:
    rec = FileSource(f"file:{RECORDING}")
    n, channels = rec.values.shape
    assert rec.rate == 10.0, "the recording's timestamp_us column says 10 Hz"
    assert rec.speed == 1.0 and rec.frame_samples == 10 and rec.stream_id == 0 and rec.loop is False
    assert len(rec.channel_names) == channels == 6 and "label" not in rec.channel_names
    assert rec.labels is not None and len(rec.labels) == n
    other = FileSource(f"file:{RECORDING}?rate=50&speed=2.5&loop=1&frame_samples=40&stream_id=7")
    assert (other.rate, other.speed, other.loop, other.frame_samples, other.stream_id) == (50.0, 2.5, True, 40, 7)


def test_npy_recording_has_default_rate_and_channel_names(tmp_path: Path) -> None:
    path = tmp_path / "rec.npy"
    np.save(path, np.zeros((30, 4), np.float32))
    rec = FileSource(f"file:{path}")
    assert rec.rate == 100.0 and rec.channel_names == ["ch0", "ch1", "ch2", "ch3"] and rec.labels is None


@pytest.mark.parametrize(
    ("url", "paced_at"),
    [
        ("synthetic:ramp?rate=1000&speed=4&frame_samples=10&count=3&channels=1", 4000.0),
        ("synthetic:ramp?rate=1000&frame_samples=10&count=3&channels=1", 1000.0),
        ("synthetic:ramp?rate=1000&speed=max&frame_samples=10&count=3&channels=1", None),
        (f"file:{RECORDING}?speed=200&frame_samples=100", 2000.0),
        (f"file:{RECORDING}?rate=20&speed=0.5&frame_samples=1000", 10.0),
        (f"file:{RECORDING}?speed=max", None),
    ],
)
def test_speed_is_a_multiple_of_real_time_and_rate_the_timestamps(
    url: str, paced_at: float | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``rate`` is what the timestamps say; ``speed`` only changes how fast frames are handed on."""
    paces: list[float | None] = []

    class Recorded(sources._Paced):
        def __init__(self, samples_per_s: float | None) -> None:
            paces.append(samples_per_s)
            super().__init__(None)  # no sleeping in the test

    monkeypatch.setattr(sources, "_Paced", Recorded)
    src = open_source(url)
    assert isinstance(src, (FileSource, SyntheticSource))
    frames = _frames(src)
    assert paces == [paced_at]
    interval = round(1e6 / src.rate)
    assert all(f[4] == interval for f in frames)
    assert [f[3] for f in frames] == [sum(g[2] for g in frames[:i]) * interval for i in range(len(frames))]


def test_serial_options_do_not_apply_to_recordings_or_generators() -> None:
    assert isinstance(open_source("synthetic:sine", baud=9600, wait=True), SyntheticSource)  # ignored there
    with pytest.raises(ArgumentError, match="apply to serial ports"):
        open_source("synthetic:sine", reconnect=False)
    with pytest.raises(ArgumentError, match="apply to serial ports"):
        open_source(f"file:{RECORDING}", exclusive=False)
