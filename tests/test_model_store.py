"""The model store (``edge_runtime.model_store``) with real signed releases of the digits
early-exit bundle and the basicmotions model: updates, refusals, rollback, a power cut at
every step (a child process SIGKILLed there), and a full disk (a child under RLIMIT_FSIZE)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest
from conftest import MODELS, ROOT

import edge_runtime
from edge_runtime import manifest as mf
from edge_runtime import model_store as ms
from edge_runtime.errors import ArgumentError, SignatureError, StoreError, VersionError

BUNDLE = MODELS / "digits_early_exit"
MOTIONS = MODELS / "basicmotions_int8.tflite"


class Releases(NamedTuple):
    private: Path
    public: Path
    v0: Path  # bundle 1.0.0
    v1: Path  # bundle 1.1.0, bundle.json as shipped
    v2: Path  # bundle 2.0.0, another first-exit threshold in bundle.json
    template: Path  # a store with v0 then v1 committed: current v1, previous v0


def _bundle_release(dst: Path, version: str, private: Path, threshold: float | None = None) -> Path:
    out = Path(shutil.copytree(BUNDLE, dst))
    if threshold is not None:
        raw = json.loads((out / "bundle.json").read_text())
        raw["stages"][0]["exit"]["threshold"] = threshold
        (out / "bundle.json").write_text(json.dumps(raw, indent=2) + "\n")
    mf.sign(out, private, version)
    return out


def no_probe(path: Path) -> None:
    pass


@pytest.fixture(scope="module")
def releases(tmp_path_factory: pytest.TempPathFactory) -> Releases:
    root = tmp_path_factory.mktemp("releases")
    private, public = mf.create_keypair(root / "keys")
    v0 = _bundle_release(root / "v0", "1.0.0", private)
    v1 = _bundle_release(root / "v1", "1.1.0", private)
    v2 = _bundle_release(root / "v2", "2.0.0", private, threshold=0.25)
    template = root / "store"
    for src in (v0, v1):
        ms.apply_update(src, template, [public], no_probe)
    return Releases(private, public, v0, v1, v2, template)


@pytest.fixture
def store(tmp_path: Path, releases: Releases) -> Path:
    """A copy of the template store: current 1.1.0, previous 1.0.0."""
    return Path(shutil.copytree(releases.template, tmp_path / "store", symlinks=True))


def version_of(path: Path | None, releases: Releases) -> str:
    """The model_version of a release, checked again against the key (complete and untampered)."""
    assert path is not None
    return mf.verify(path, [releases.public]).model_version


def leftovers(store: Path) -> list[str]:
    return sorted(p.name for p in store.iterdir() if p.name.startswith((".staging-", ".trash-")))


def classify_once(path: Path) -> None:
    """What the daemon does with a release: load it and run one window."""
    with edge_runtime.load(path, "cpu") as model:
        spec = model.inputs[0]
        model.classify(np.zeros(spec.shape, np.float32))


# -- updates -------------------------------------------------------------------------------------


def test_updates_rollback_and_pruning(tmp_path: Path, releases: Releases) -> None:
    store = tmp_path / "store"
    assert ms.current(store) is None and ms.installed_version(store) is None
    steps: list[str] = []
    probed: list[Path] = []

    def probe(path: Path) -> None:
        probed.append(path)
        classify_once(path)

    first = ms.apply_update(releases.v0, store, [releases.public], probe, on_step=steps.append)
    assert probed[0].name.startswith(".staging-")  # the staged copy is probed, before commit
    assert first == ms.current(store) and first.parent == store / "releases"
    assert ms.installed_version(store) == "1.0.0" and ms.previous(store) is None
    assert steps[0] == "staging-created" and steps[-1] == "committed"
    second = ms.apply_update(releases.v1, store, [releases.public], probe)
    assert ms.current(store) == second and ms.previous(store) == first
    third = ms.apply_update(releases.v2, store, [releases.public], probe)
    assert sorted(p.name for p in (store / "releases").iterdir()) == sorted([second.name, third.name])  # v0 pruned
    assert version_of(ms.current(store), releases) == "2.0.0"
    classify_once(third)
    assert os.readlink(store / "current") == f"releases/{third.name}"  # relative: the store can move
    # the new release fails after the swap (e.g. its warm-up): back to the one before
    assert ms.rollback(store) == second
    assert ms.current(store) == second and ms.installed_version(store) == "1.1.0" and ms.previous(store) is None
    with pytest.raises(StoreError, match="no previous release to roll back to"):
        ms.rollback(store)
    assert ms.apply_update(releases.v2, store, [releases.public], probe) == third  # committed again, reused
    assert leftovers(store) == []


def test_update_steps_in_order(tmp_path: Path, releases: Releases) -> None:
    steps: list[str] = []
    ms.apply_update(releases.v0, tmp_path / "store", [releases.public], no_probe, on_step=steps.append)
    assert steps == [s for s in STEPS if not s.startswith("trashed:")]


def test_a_model_file_release(tmp_path: Path, releases: Releases) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for f in (MOTIONS, MOTIONS.with_suffix(".json")):
        shutil.copyfile(f, src / f.name)
    mf.sign(src / MOTIONS.name, releases.private, "0.3.0")
    path = ms.apply_update(src / MOTIONS.name, tmp_path / "store", [releases.public], classify_once)
    assert path.name == MOTIONS.name and path.parent.parent.name == "releases"
    assert sorted(p.name for p in path.parent.iterdir()) == sorted(
        [MOTIONS.name, "basicmotions_int8.json", f"{MOTIONS.name}.manifest.json", f"{MOTIONS.name}.manifest.json.sig"]
    )
    assert ms.current(tmp_path / "store") == path
    with edge_runtime.load(path, "cpu") as model:
        assert model.labels == ("badminton", "running", "standing", "walking")  # the sidecar came along


def test_re_installing_the_current_release_changes_nothing(store: Path, releases: Releases) -> None:
    before = ms.current(store)
    assert ms.apply_update(releases.v1, store, [releases.public], no_probe) == before
    assert ms.current(store) == before and ms.previous(store) is not None
    assert leftovers(store) == []


# -- refusals leave the current release ----------------------------------------------------------


def test_a_tampered_source_is_refused_naming_the_source_file(store: Path, releases: Releases, tmp_path: Path) -> None:
    before = ms.current(store)
    src = Path(shutil.copytree(releases.v2, tmp_path / "tampered"))
    data = bytearray((src / "stage1.tflite").read_bytes())
    data[64] ^= 0x10
    (src / "stage1.tflite").write_bytes(bytes(data))
    with pytest.raises(SignatureError, match="sha256 differs") as info:
        ms.apply_update(src, store, [releases.public], no_probe)
    assert info.value.path == str(src / "stage1.tflite")  # the file in the source, not in the staging copy
    assert ms.current(store) == before and leftovers(store) == []


def test_downgrade_and_unsigned_are_refused(store: Path, releases: Releases, tmp_path: Path) -> None:
    before = ms.current(store)
    with pytest.raises(VersionError, match=r"downgrade refused: model_version 1\.0\.0 is below the installed 1\.1\.0"):
        ms.apply_update(releases.v0, store, [releases.public], no_probe)
    unsigned = Path(shutil.copytree(BUNDLE, tmp_path / "unsigned"))
    with pytest.raises(SignatureError, match="unsigned") as info:
        ms.apply_update(unsigned, store, [releases.public], no_probe)
    assert info.value.path == str(unsigned)
    assert ms.current(store) == before and leftovers(store) == []


def test_a_failing_probe_leaves_the_current_release(store: Path, releases: Releases) -> None:
    before = ms.current(store)

    def probe(path: Path) -> None:
        raise edge_runtime.ModelLoadError("probe child: no device could run it", path=str(path))

    with pytest.raises(edge_runtime.ModelLoadError, match="no device could run it"):
        ms.apply_update(releases.v2, store, [releases.public], probe)
    assert ms.current(store) == before and leftovers(store) == []
    assert sorted(p.name for p in (store / "releases").iterdir()) == sorted(
        p.name for p in (releases.template / "releases").iterdir()
    )


def test_commit_checks_its_arguments(store: Path, releases: Releases, tmp_path: Path) -> None:
    with ms.stage(releases.v2, store) as a, ms.stage(releases.v2, store) as b:
        verified = mf.verify(a.load_path, [releases.public])
        with pytest.raises(ArgumentError, match="the verified manifest is of"):
            ms.commit(store, b, verified)
        with pytest.raises(ArgumentError, match="keep must be a whole number >= 2"):
            ms.commit(store, a, verified, keep=1)
    with ms.stage(releases.v2, store) as c:
        verified = mf.verify(c.load_path, [releases.public])
        path = ms.commit(store, c, verified)
        with pytest.raises(ArgumentError, match="already committed or closed"):
            ms.commit(store, c, verified)
    assert ms.current(store) == path and leftovers(store) == []


# -- crashes, stale and live staging directories ----------------------------------------------


def test_cleanup_spares_a_live_staging_dir_and_removes_dead_ones(store: Path, releases: Releases) -> None:
    dead = store / ".staging-deadbeef"
    (dead / "sub").mkdir(parents=True)
    (dead / "sub" / "half.tflite").write_bytes(b"\0" * 100)
    (store / ".trash-1.0.0-abc-0000").mkdir()
    with ms.stage(releases.v2, store) as live:
        assert ms.current(store) is not None  # cleans up as a restart does
        assert leftovers(store) == [live.path.name]  # the dead ones went, the live one stays
        assert live.path.is_dir()
    assert leftovers(store) == []


def test_a_current_release_deleted_from_outside(store: Path, releases: Releases) -> None:
    """Only something outside the store can do this; a restart then loads the previous release."""
    prev = ms.previous(store)
    shutil.rmtree(store / os.readlink(store / "current"))
    assert ms.current(store) == prev
    assert prev is not None
    shutil.rmtree(prev)
    with pytest.raises(StoreError, match=r"current points at releases/1\.1\.0-[0-9a-f]{12}, which is not there"):
        ms.current(store)


def _bundle_steps() -> list[str]:
    files = sorted(p.name for p in BUNDLE.iterdir() if p.is_file())
    return [
        "staging-created",
        *[f"copied:{name}" for name in [*files, "manifest.json", "manifest.json.sig"]],
        "staged",
        "verified",
        "probed",
        "release-renamed",
        "previous-linked",
        "current-switched",
        "trashed:",  # the oldest release (1.0.0) is pruned; a prefix: its name ends in its digest
        "committed",
    ]


#: Every step ``apply_update`` reports for a bundle on a store holding two releases.
STEPS = _bundle_steps()

#: The child: apply an update, SIGKILL itself when step argv[4] (or a step starting with it) is done.
CRASH_CHILD = """
import os, signal, sys
from edge_runtime.model_store import apply_update
store, src, public, kill_at = sys.argv[1:5]
def on_step(step):
    if step == kill_at or (kill_at.endswith(":") and step.startswith(kill_at)):
        os.kill(os.getpid(), signal.SIGKILL)
apply_update(src, store, [public], lambda path: None, on_step=on_step)
sys.exit(3)  # the step never came
"""


def run_child(script: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", script, *map(str, args)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )


def test_the_crash_matrix_covers_every_step(tmp_path: Path, store: Path, releases: Releases) -> None:
    steps: list[str] = []
    ms.apply_update(releases.v2, store, [releases.public], no_probe, on_step=steps.append)
    assert [s if not s.startswith("trashed:") else "trashed:" for s in steps] == STEPS


@pytest.mark.parametrize("kill_at", STEPS)
def test_power_cut_at_each_step(kill_at: str, store: Path, releases: Releases) -> None:
    """SIGKILL right after ``kill_at``: a restart finds the last committed release, complete
    (it verifies and loads), nothing half-written is left, and the next update works."""
    old = ms.current(store)
    child = run_child(CRASH_CHILD, store, releases.v2, releases.public, kill_at)
    assert child.returncode == -signal.SIGKILL, child.stderr
    switched = STEPS.index(kill_at) >= STEPS.index("current-switched")
    restart = ms.current(store)
    assert version_of(restart, releases) == ("2.0.0" if switched else "1.1.0")
    if not switched:
        assert restart == old
    assert leftovers(store) == []
    assert restart is not None
    classify_once(restart)
    assert ms.apply_update(releases.v2, store, [releases.public], no_probe) == ms.current(store)
    assert version_of(ms.current(store), releases) == "2.0.0" and leftovers(store) == []


def test_power_cut_before_the_first_commit(tmp_path: Path, releases: Releases) -> None:
    store = tmp_path / "store"
    child = run_child(CRASH_CHILD, store, releases.v0, releases.public, "previous-linked")
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert ms.current(store) is None and ms.installed_version(store) is None and leftovers(store) == []


# -- a full disk -----------------------------------------------------------------------------------

#: The child: files may grow to argv[4] bytes (RLIMIT_FSIZE, SIGXFSZ ignored: a write past it
#: fails with EFBIG, as a full disk fails with ENOSPC); prints the StoreError as JSON.
DISK_FULL_CHILD = """
import json, resource, signal, sys
from edge_runtime.errors import StoreError
from edge_runtime.model_store import apply_update
store, src, public, limit = sys.argv[1:5]
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (int(limit), resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
try:
    apply_update(src, store, [public], lambda path: None)
except StoreError as exc:
    print(json.dumps({"reason": exc.reason, "path": exc.path}))
    sys.exit(0)
sys.exit(3)
"""


def test_disk_full_while_staging(store: Path, releases: Releases) -> None:
    before = ms.current(store)
    child = run_child(DISK_FULL_CHILD, store, releases.v2, releases.public, "200000")
    assert child.returncode == 0, child.stdout + child.stderr
    err = json.loads(child.stdout)
    assert "File too large (EFBIG)" in err["reason"] and "the current release is unchanged" in err["reason"]
    assert "while writing calibration.npz" in err["reason"]  # the first file over 200,000 bytes
    assert Path(err["path"]).parent.name.startswith(".staging-") and Path(err["path"]).name == "calibration.npz"
    assert leftovers(store) == []  # the staging copy was deleted
    assert ms.current(store) == before
    classify_once(before)  # type: ignore[arg-type]


def _fail_with(monkeypatch: pytest.MonkeyPatch, target: Any, name: str, code: int, after: int = 0) -> None:
    """Make ``target.name`` raise OSError(code) from its ``after``-th call on."""
    real: Callable[..., Any] = getattr(target, name)
    calls = [0]

    def failing(*args: Any, **kw: Any) -> Any:
        calls[0] += 1
        if calls[0] > after:
            raise OSError(code, os.strerror(code))
        return real(*args, **kw)

    monkeypatch.setattr(target, name, failing)


def test_no_space_left_while_staging(store: Path, releases: Releases, monkeypatch: pytest.MonkeyPatch) -> None:
    before = ms.current(store)
    _fail_with(monkeypatch, ms, "_copy_file", errno.ENOSPC, after=2)  # README.md, bundle.json, then calibration.npz
    with pytest.raises(StoreError, match=r"while writing calibration\.npz: No space left on device \(ENOSPC\)"):
        ms.apply_update(releases.v2, store, [releases.public], no_probe)
    assert leftovers(store) == [] and ms.current(store) == before


def test_no_space_left_while_switching(store: Path, releases: Releases, monkeypatch: pytest.MonkeyPatch) -> None:
    """The release directory is in place, the new ``current`` link cannot be made: the old
    release stays current, and the next update reuses the complete release directory."""
    before = ms.current(store)
    _fail_with(monkeypatch, os, "symlink", errno.ENOSPC, after=1)  # previous is linked, current is not
    with pytest.raises(StoreError, match=r"commit of 2\.0\.0-[0-9a-f]{12} failed: No space left on device"):
        ms.apply_update(releases.v2, store, [releases.public], no_probe)
    assert ms.current(store) == before and leftovers(store) == []
    monkeypatch.undo()
    path = ms.apply_update(releases.v2, store, [releases.public], no_probe)
    assert version_of(path, releases) == "2.0.0" and ms.current(store) == path
