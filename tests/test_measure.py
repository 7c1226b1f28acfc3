"""Measured device and thread choice (``edge_runtime.measure``): the logic, not the timings.

The machine is noisy, so nothing here asserts which setting is fastest on it: the choice is
tested as a pure function over tables, the cache by its keys and files, and ``load`` by what
it compiled (``measure.COMPILES``) and what it says in ``reason``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from conftest import MODELS, backend_available

import edge_runtime
from edge_runtime import measure
from edge_runtime.cli import main
from edge_runtime.device_info import Device
from edge_runtime.devices import Candidate, parse_request, probe, select
from edge_runtime.errors import DeviceRequestError, ModelLoadError
from edge_runtime.measure import Timing, choose_fastest, settings_for
from edge_runtime.model_file import read_model_file

DIGITS = MODELS / "digits_cnn_int8.tflite"
BOTH = pytest.mark.skipif(
    not (backend_available("litert") and backend_available("openvino")), reason="needs litert and openvino"
)


@pytest.fixture(autouse=True)
def quick(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A short timing budget, and a cache directory of the test's own (never ~/.cache)."""
    monkeypatch.setattr(measure, "BUDGET_S", 0.05)
    cache = tmp_path / "cache"
    monkeypatch.setenv("EDGE_RUNTIME_MEASURE_CACHE", str(cache))
    return cache


def cand(request: str, kind: str = "cpu") -> Candidate:
    backend, _, name = request.partition(":")
    return Candidate(Device(backend, name, kind, name), "auto", "test")


def t(request: str, threads: int | None, p50: float, error: str | None = None) -> Timing:
    return Timing(request, threads, p50, 0.0, 10, error)


# --- pure parts -------------------------------------------------------------------------------


def test_choose_fastest_least_p50() -> None:
    table = [t("litert:cpu", 1, 195.0), t("litert:cpu", 2, 150.0), t("openvino:CPU", None, 108.0)]
    assert choose_fastest(table) == table[2]


def test_choose_fastest_ties_go_to_fewer_threads_then_auto_order() -> None:
    table = [t("litert:cpu", 2, 100.0), t("openvino:CPU", None, 99.0), t("openvino:CPU", 1, 101.0)]
    assert choose_fastest(table, tolerance=0.03) == table[2]  # within 3 %: 1 thread wins
    assert choose_fastest(table, tolerance=0.0) == table[1]
    same = [t("litert:cpu", 1, 50.0), t("openvino:CPU", 1, 50.0)]
    assert choose_fastest(same) == same[0]  # auto's order breaks the tie


def test_choose_fastest_skips_errors_and_raises_when_none_ran() -> None:
    table = [t("litert:edgetpu", None, 0.0, "no TPU"), t("litert:cpu", 1, 80.0)]
    assert choose_fastest(table) == table[1]
    with pytest.raises(ModelLoadError, match="no candidate setting") as err:
        choose_fastest([table[0]])
    assert "no TPU" in str(err.value)


def test_default_thread_counts() -> None:
    assert measure.default_thread_counts(1) == (1,)
    assert measure.default_thread_counts(2) == (1, 2)
    assert measure.default_thread_counts(8) == (1, 2, 8)


def test_settings_per_backend_and_kind() -> None:
    cands = [cand("litert:edgetpu", "tpu"), cand("litert:cpu"), cand("openvino:CPU")]
    got = [(s.request, s.threads) for s in settings_for(cands, (1, 2))]
    assert got == [
        ("litert:edgetpu", None),
        ("litert:cpu", 1),
        ("litert:cpu", 2),
        ("openvino:CPU", None),
        ("openvino:CPU", 1),
        ("openvino:CPU", 2),
    ]
    no_default = settings_for(cands[2:], (2,), default_threads=False)
    assert [(s.request, s.threads) for s in no_default] == [("openvino:CPU", 2)]


def test_measure_grammar() -> None:
    r = parse_request("auto:measure")
    assert r.measure and r.is_auto
    k = parse_request("CPU:measure")
    assert k.measure and k.kind == "cpu"
    assert not parse_request("auto").measure
    with pytest.raises(DeviceRequestError, match="threads='auto'"):
        parse_request("litert:cpu:measure")


# --- cache ------------------------------------------------------------------------------------


def fields(**change: object) -> dict[str, object]:
    base = measure.cache_fields(
        "ab" * 32,
        settings_for([cand("litert:cpu"), cand("openvino:CPU")], (1, 2)),
        {"litert": "2.3.0", "openvino": "2026.4"},
        "Some CPU",
        {"performance_hint": "LATENCY"},
    )
    base.update(change)
    return base


def test_cache_key_changes_with_everything_it_depends_on() -> None:
    key = measure.cache_key(fields())
    assert key == measure.cache_key(fields())
    others = [
        fields(model_sha256="cd" * 32),
        fields(runtimes={"litert": "2.4.0", "openvino": "2026.4"}),
        fields(runtimes={"litert": "2.3.0", "openvino": "2026.5"}),
        fields(cpu="Other CPU"),
        fields(settings=[["litert:cpu", 1], ["openvino:CPU", None]]),
        fields(options={"performance_hint": "THROUGHPUT"}),
    ]
    keys = {measure.cache_key(f) for f in others}
    assert key not in keys and len(keys) == len(others)
    three = measure.cache_fields("ab" * 32, settings_for([cand("litert:cpu")], (1, 2, 4)), {}, "c", None)
    two = measure.cache_fields("ab" * 32, settings_for([cand("litert:cpu")], (1, 2)), {}, "c", None)
    assert measure.cache_key(three) != measure.cache_key(two)


def test_cache_round_trip(tmp_path: Path) -> None:
    table = (t("litert:cpu", 1, 20.0), t("openvino:CPU", None, 10.0))
    choice = measure.MeasuredChoice(table, table[1], "k1", measured_at="2026-01-01T00:00:00Z")
    measure.store(tmp_path, choice, fields())
    hit = measure.lookup(tmp_path, "k1")
    assert hit is not None and hit.cached
    assert hit.table == table and hit.fastest == table[1] and hit.measured_at == choice.measured_at
    assert measure.lookup(tmp_path, "k2") is None
    assert not list(tmp_path.glob(".measure-*"))  # the temporary file was renamed, not left


def test_corrupt_cache_warns_and_is_rewritten(quick: Path, caplog: pytest.LogCaptureFixture) -> None:
    quick.mkdir(parents=True)
    (quick / measure.CACHE_FILE).write_text("{not json")
    source = read_model_file(DIGITS)
    with caplog.at_level(logging.WARNING, logger="edge_runtime"):
        choice = measure.measure_candidates(source, [cand("litert:cpu")], (1,))
    assert not choice.cached
    assert any("corrupt" in r.getMessage() for r in caplog.records)
    stored = json.loads((quick / measure.CACHE_FILE).read_text())
    assert choice.key in stored["entries"]
    assert measure.lookup(quick, choice.key) is not None


def test_stale_key_misses(monkeypatch: pytest.MonkeyPatch) -> None:
    source = read_model_file(DIGITS)
    before = measure.COMPILES.compiles
    first = measure.measure_candidates(source, [cand("litert:cpu")], (1,))
    again = measure.measure_candidates(source, [cand("litert:cpu")], (1,))
    assert again.cached and again.key == first.key
    assert measure.COMPILES.compiles == before + 1
    monkeypatch.setattr(measure, "cpu_model", lambda: "a different CPU")
    moved = measure.measure_candidates(source, [cand("litert:cpu")], (1,))
    assert not moved.cached and moved.key != first.key
    assert measure.COMPILES.compiles == before + 2


def test_failed_setting_is_a_row_with_its_reason() -> None:
    bogus = Candidate(
        Device("litert", "delegate=/nonexistent.so", "other", "x", options=(("library", "/nonexistent.so"),)), "t", "t"
    )
    choice = measure.measure_candidates(read_model_file(DIGITS), [bogus, cand("litert:cpu")], (1,))
    bad = [row for row in choice.table if row.error]
    assert len(bad) == 1 and bad[0].request.startswith("litert:delegate=")
    assert choice.fastest.request == "litert:cpu"


# --- load -------------------------------------------------------------------------------------


@BOTH
def test_auto_measure_loads_on_the_fastest_and_then_hits_the_cache() -> None:
    before = measure.COMPILES.compiles
    with edge_runtime.load_model(DIGITS, "auto:measure") as m:
        got = m.selection.measurement
        assert got is not None and not got.cached
        assert {row.request for row in got.table} >= {"litert:cpu", "openvino:CPU"}
        assert m.device == got.fastest.request
        assert m.reason.startswith("auto:measure -> fastest of ")
        measured = measure.COMPILES.compiles - before
        assert measured == len(got.table)
    with edge_runtime.load_model(DIGITS, "auto:measure") as again:
        hit = again.selection.measurement
        assert hit is not None and hit.cached and hit.key == got.key
        assert again.device == got.fastest.request
    assert measure.COMPILES.compiles - before == measured  # nothing measured the second time


@BOTH
def test_plain_auto_uses_a_cached_choice(quick: Path) -> None:
    source = read_model_file(DIGITS)
    sel = select("auto", probe(["litert", "openvino"]), source.format)
    settings = settings_for(sel.candidates, measure.default_thread_counts())
    f = measure.cache_fields(
        measure.model_sha256(source),
        settings,
        measure.runtime_versions([c.device.backend for c in sel.candidates]),
        measure.cpu_model(),
        {"performance_hint": "LATENCY"},
    )
    with edge_runtime.load_model(DIGITS, "auto") as cold:  # nothing cached: as before
        assert cold.device == "litert:cpu" and cold.selection.measurement is None
    table = tuple(t(s.request, s.threads, 100.0 if s.request == "litert:cpu" else 50.0) for s in settings)
    fastest = choose_fastest(table)
    assert fastest.request == "openvino:CPU"
    measure.store(quick, measure.MeasuredChoice(table, fastest, measure.cache_key(f)), f)
    before = measure.COMPILES.compiles
    with edge_runtime.load_model(DIGITS, "auto") as warm:
        assert warm.device == "openvino:CPU"
        assert "cached auto:measure" in warm.reason
        assert warm.selection.measurement is not None
    assert measure.COMPILES.compiles == before
    with edge_runtime.load_model(DIGITS, "auto", threads=1) as explicit:  # threads given: as before
        assert explicit.device == "litert:cpu"


def test_threads_auto_measures_only_the_named_device() -> None:
    with edge_runtime.load(DIGITS, "litert:cpu", threads="auto") as m:
        got = m.selection.measurement  # type: ignore[attr-defined]
        assert got is not None
        assert {row.request for row in got.table} == {"litert:cpu"}
        assert [row.threads for row in got.table] == list(measure.default_thread_counts())
        assert "threads=auto" in m.reason  # type: ignore[attr-defined]


def test_threads_auto_and_num_threads_clash() -> None:
    with pytest.raises(ValueError, match="threads='auto'"):
        edge_runtime.load(DIGITS, "litert:cpu", threads="auto", num_threads=2)


@BOTH
def test_info_measure_prints_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", str(DIGITS), "--measure", "--no-isolate"]) == 0
    out = capsys.readouterr().out
    assert "auto:measure -> fastest of" in out
    assert "measured (measured now" in out and "openvino:CPU" in out
    assert main(["info", str(DIGITS), "-d", "auto:measure", "--no-isolate", "--json"]) == 0
    desc = json.loads(capsys.readouterr().out)
    assert desc["measurement"]["cached"] is True
    assert desc["device"] == desc["measurement"]["fastest"]["request"]


def test_time_interleaved_rounds_and_a_failing_function() -> None:
    calls = {"a": 0, "b": 0}

    def a() -> None:
        calls["a"] += 1

    def b() -> None:
        calls["b"] += 1
        if calls["b"] > 4:
            raise ModelLoadError("broke on call 5")

    ta, tb = measure.time_interleaved([a, b], budget_s=0.001, rounds=3, warmup=2)
    assert ta.error is None and ta.p50_us > 0 and ta.calls >= 3
    assert tb.error == "broke on call 5" and tb.p50_us == 0.0
