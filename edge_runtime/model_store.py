"""The daemon's model store: signed releases on disk, switched so that a power cut at any
instant leaves either the old or the new release current, each complete.

Layout (one store per model slot; every name below is inside ``STORE``)::

    releases/<model_version>-<digest12>/  a committed release: the model file (with its .bin and
                                           sidecar) or the bundle's files, plus the signed manifest
                                           and its .sig; never written again once committed
    current  -> releases/<name>            symbolic link (relative): what a restart loads
    previous -> releases/<name>            the release current before it, for ``rollback``
    .staging-XXXX/                         a release being copied in (see ``stage``)
    .trash-XXXX/                           a pruned release being deleted
    .lock                                  taken (flock) by ``commit`` and ``rollback``: one writer at a time

``digest12``: the first 12 hex digits of the sha256 of the release's manifest bytes.

Why it survives a power cut: ``stage`` writes every file into a fresh ``.staging-*``
directory and fsyncs each file and directory; ``commit`` renames that directory into
``releases/`` (fsyncing both parents), then replaces ``previous`` and then ``current`` each by
rename(2) of a new symbolic link over the old one, fsyncing the store directory after each.
rename(2) is atomic, so ``current`` names the old release until the instant it names the new
one, and it never names a directory that is not complete on disk. Anything else a cut can
leave behind (a ``.staging-*`` or ``.trash-*`` directory, a ``.current.new`` link) is never
loaded: ``current()`` and ``stage()`` delete the stale ones. A staging or trash directory in
use is marked by an flock on it, held by its owner (released by the kernel when the owner
dies), so a live one is never deleted from under a concurrent update.

The daemon's update path is ``apply_update(src, store, trusted_keys, probe)``: stage, verify
the staged copy (the bytes that will be loaded, not the source that may still change),
probe it (the caller's callable: load it in a child, warm it), commit. Each step is logged at
info level and reported to ``on_step`` (a name such as ``"verified"``), for progress and for
tests that stop the process at a given step. Every filesystem failure is a ``StoreError``
naming the step, the path and the system's reason; a full disk (ENOSPC, EFBIG) while staging
deletes the staging directory and leaves ``current`` as it was.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .errors import ArgumentError, SignatureError, StoreError, VersionError
from .manifest import (
    BUNDLE_MANIFEST,
    CHUNK_BYTES,
    MODEL_SUFFIX,
    MODEL_SUFFIXES,
    PublicKeyLike,
    VerifiedManifest,
    compare_versions,
    manifest_path,
    member_files,
    read_unverified,
    signature_path,
    verify,
)

log = logging.getLogger("edge_runtime")

RELEASES = "releases"
CURRENT = "current"
PREVIOUS = "previous"
STAGING_PREFIX = ".staging-"
TRASH_PREFIX = ".trash-"
LOCK = ".lock"
#: Releases kept by default after a commit: the current one and the previous one (rollback).
KEEP = 2

#: Called with each step's name once that step is done (see ``apply_update`` for the names).
OnStep = Callable[[str], None]
#: Checks a staged release before it is committed: given the path ``edge_runtime.load`` takes,
#: returns when the release is good, raises when it is not. Must not keep the path: it moves.
Probe = Callable[[Path], None]


def _no_step(step: str) -> None:
    pass


# -- small filesystem helpers --------------------------------------------------------------------


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _reason(exc: OSError) -> str:
    name = errno.errorcode.get(exc.errno or 0, "")
    text = exc.strerror or str(exc)
    return f"{text} ({name})" if name else text


def _lock_dir(path: Path) -> int:
    """An fd on directory ``path`` holding an exclusive flock on it (marks it in use)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextmanager
def _store_lock(store: Path) -> Iterator[None]:
    """The store's writer lock (blocks until free). The kernel drops it if the holder dies."""
    fd = os.open(store / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _ensure_store(store: Path) -> None:
    created = not store.is_dir()
    store.mkdir(parents=True, exist_ok=True)
    if created:
        _fsync_dir(store.parent)
    releases = store / RELEASES
    if not releases.is_dir():
        releases.mkdir()
        _fsync_dir(store)


@contextmanager
def _try_store_lock(store: Path) -> Iterator[bool]:
    """The store's writer lock if it is free now (True), else nothing held (False)."""
    fd = os.open(store / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def _cleanup_locked(store: Path) -> None:
    """Delete ``.staging-*`` and ``.trash-*`` directories that no live process holds (their
    owner died: a power cut, a kill). The caller holds the store lock: staging and trash
    directories are created, and flocked, only under it, so an unlocked one is abandoned.
    Best effort: a failure is logged, not raised."""
    try:
        entries = list(store.iterdir())
    except OSError as exc:
        log.warning("edge_runtime: store %s: cannot list it to clean up: %s", store, _reason(exc))
        return
    for entry in entries:
        if not entry.name.startswith((STAGING_PREFIX, TRASH_PREFIX)) or entry.is_symlink() or not entry.is_dir():
            continue
        try:
            fd = _lock_dir(entry)
        except BlockingIOError:
            continue  # in use by a live stage or prune
        except OSError as exc:
            log.warning("edge_runtime: store %s: cannot check %s: %s", store, entry.name, _reason(exc))
            continue
        try:
            shutil.rmtree(entry)
            log.info("edge_runtime: store %s: removed %s left by an interrupted update", store, entry.name)
        except OSError as exc:
            log.warning("edge_runtime: store %s: cannot remove %s: %s", store, entry.name, _reason(exc))
        finally:
            os.close(fd)


def _cleanup(store: Path) -> None:
    """``_cleanup_locked`` if the store lock is free now; skipped (logged at debug) while another
    thread or process holds it: it will clean up itself, or the next call will."""
    try:
        with _try_store_lock(store) as held:
            if held:
                _cleanup_locked(store)
            else:
                log.debug("edge_runtime: store %s: busy; cleanup skipped", store)
    except OSError as exc:
        log.warning("edge_runtime: store %s: cannot take its lock to clean up: %s", store, _reason(exc))


def _switch_link(store: Path, name: str, target: str) -> None:
    """Point ``STORE/name`` at ``target`` (relative to the store) by atomic rename of a new link."""
    tmp = store / f".{name}.new"
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.replace(tmp, store / name)
    _fsync_dir(store)


def _link_target(store: Path, name: str) -> Path | None:
    """The release directory ``STORE/name`` links to; None when there is no such link.
    ``StoreError`` when it is not a link into ``releases/`` or points at nothing."""
    link = store / name
    if not link.is_symlink():
        if os.path.lexists(link):
            raise StoreError(f"{name} is not a symbolic link into {RELEASES}/", path=str(link))
        return None
    target = os.readlink(link)
    parts = Path(target).parts
    if len(parts) != 2 or parts[0] != RELEASES or parts[1] in (".", ".."):
        raise StoreError(f"{name} points at {target!r}, not at a release in {RELEASES}/", path=str(link))
    release = store / target
    if not release.is_dir():
        raise StoreError(f"{name} points at {target}, which is not there", path=str(link))
    return release


def _release_manifest(release: Path) -> Path:
    bundle = release / BUNDLE_MANIFEST
    if bundle.is_file():
        return bundle
    found = sorted(release.glob("*" + MODEL_SUFFIX))
    if len(found) != 1:
        raise StoreError(f"release has {len(found)} model manifests, expected one", path=str(release))
    return found[0]


def load_path(release: str | os.PathLike[str]) -> Path:
    """What ``edge_runtime.load`` takes for a committed or staged release directory: the
    directory itself for a bundle, the model file inside it for a model file."""
    rel = Path(release)
    manifest = _release_manifest(rel)
    if manifest.name == BUNDLE_MANIFEST:
        return rel
    model = read_unverified(manifest).get("model")
    if not isinstance(model, str) or "/" in model:
        raise StoreError("the release's manifest names no model file", path=str(manifest))
    return rel / model


def release_name(verified: VerifiedManifest) -> str:
    """``<model_version>-<first 12 hex digits of the manifest's sha256>``, safe as a file name."""
    version = re.sub(r"[^A-Za-z0-9._+-]", "_", verified.model_version)
    return f"{version}-{verified.digest[:12]}"


# -- reading the store ---------------------------------------------------------------------------


def current(store: str | os.PathLike[str], *, clean: bool = True) -> Path | None:
    """The path a (re)starting daemon loads: the current release's bundle directory or model
    file; None when nothing was ever committed. Deletes staging and trash directories left by
    an interrupted update first (best effort; ``clean=False``: reads only, e.g. to check a config).

    If ``current`` points at a release that is gone (only possible when something outside the
    store deleted it), the previous release is returned with a warning; ``StoreError`` when
    neither is usable. The release is not re-verified (it was when committed): pass the result
    to ``manifest.verify`` to check it again.
    """
    s = Path(store)
    if not s.is_dir():
        return None
    if clean:
        _cleanup(s)
    try:
        release = _link_target(s, CURRENT)
    except StoreError as exc:
        try:
            fallback = _link_target(s, PREVIOUS)
        except StoreError:
            fallback = None
        if fallback is None:
            raise
        log.warning("edge_runtime: store %s: %s; loading the previous release %s", s, exc.reason, fallback.name)
        release = fallback
    return None if release is None else load_path(release)


def previous(store: str | os.PathLike[str]) -> Path | None:
    """The load path of the release ``rollback`` would go back to; None when there is none."""
    release = _link_target(Path(store), PREVIOUS)
    return None if release is None else load_path(release)


def installed_version(store: str | os.PathLike[str]) -> str | None:
    """The current release's ``model_version`` (from its manifest, not re-verified); None when
    nothing is installed. A new release below it is a downgrade and is refused."""
    s = Path(store)
    if not s.is_dir():
        return None
    release = _link_target(s, CURRENT)
    if release is None:
        return None
    version = read_unverified(_release_manifest(release)).get("model_version")
    if not isinstance(version, str):
        raise StoreError("the current release's manifest has no model_version", path=str(release))
    return version


# -- staging -------------------------------------------------------------------------------------


class StagedRelease:
    """A release copied into ``STORE/.staging-*``, every file and directory fsynced, not yet
    verified or committed. Owns that directory (marked in use by an flock it holds) until
    ``commit`` moves it into ``releases/``, or ``close()`` deletes it. A context manager;
    ``close()`` is idempotent and a no-op after a commit.

    ``path``: the staging directory. ``load_path``: what ``verify`` and ``edge_runtime.load``
    take (the directory for a bundle, the model file in it for a model file). ``source``: the
    model file or bundle directory it was copied from. ``bytes``: bytes copied.
    """

    def __init__(self, store: Path, path: Path, source: Path, kind: Literal["bundle", "model"], fd: int) -> None:
        self.store = store
        self.path = path
        self.source = source
        self.kind = kind
        self.load_path = path if kind == "bundle" else path / source.name
        self.bytes = 0
        self.files = 0
        self._fd: int | None = fd
        self._owned = True

    def _released(self) -> None:
        """The directory now belongs to the store (committed); close the lock only."""
        self._owned = False
        self.close()

    def close(self) -> None:
        if self._owned:
            self._owned = False
            try:
                shutil.rmtree(self.path)
            except FileNotFoundError:
                pass
            except OSError as exc:  # the next current()/stage() removes it: it is no longer locked
                log.warning("edge_runtime: store %s: cannot remove %s: %s", self.store, self.path.name, _reason(exc))
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    @property
    def closed(self) -> bool:
        return self._fd is None

    def __enter__(self) -> StagedRelease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def source_path(self, staged: str | None) -> str | None:
        """A path inside the staging directory as the same path in the source (for messages)."""
        if staged is None:
            return None
        root = self.source if self.kind == "bundle" else self.source.parent
        try:
            return str(root / Path(staged).relative_to(self.path))
        except ValueError:
            return staged


def _copy_file(src: Path, dst: Path) -> int:
    """Copy ``src`` to a new file ``dst`` (mode 0644), fsync it; the byte count."""
    size = 0
    with open(src, "rb") as fin:
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with open(fd, "wb", buffering=0, closefd=True) as fout:
            while chunk := fin.read(CHUNK_BYTES):
                view = memoryview(chunk)
                while view:  # a raw write may write less than asked (a signal, a nearly full disk)
                    n = fout.write(view)
                    if not n:
                        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
                    view = view[n:]
                size += len(chunk)
            os.fsync(fout.fileno())
    return size


def stage(
    src: str | os.PathLike[str], store: str | os.PathLike[str], *, on_step: OnStep | None = None
) -> StagedRelease:
    """Copy the model file (with its ``.bin`` and sidecar) or the bundle directory ``src``, with
    its manifest and signature when present, into a new ``STORE/.staging-*`` directory, fsync
    every file and directory, and return it (the caller owns it: use ``with``).

    Nothing is verified here (``verify`` the staged copy: those are the bytes that will be
    loaded). The store and ``releases/`` are created when missing; stale staging directories
    are deleted first. Steps reported: ``staging-created``, ``copied:<relative path>`` per
    file, ``staged``. A failure (a full disk: ENOSPC, EFBIG) deletes the staging directory
    and raises ``StoreError`` naming the file and the reason; ``current`` is never touched.
    ``ModelFileError``: ``src`` is missing or not a model or bundle.
    """
    step = on_step or _no_step
    s, source = Path(store), Path(src)
    members = member_files(source)
    names = list(members.files)
    names += [m.relative_to(members.root).as_posix() for m in (members.manifest, members.signature) if m.is_file()]
    try:
        _ensure_store(s)
        with _store_lock(s):  # a staging directory is never seen unlocked by a cleanup
            _cleanup_locked(s)
            path = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=s))
            try:
                fd = _lock_dir(path)
            except BaseException:
                shutil.rmtree(path, ignore_errors=True)
                raise
    except OSError as exc:
        raise StoreError(f"cannot create a staging directory: {_reason(exc)}", path=str(exc.filename or s)) from exc
    staged = StagedRelease(s, path, source, members.kind, fd)
    current_file = path
    try:
        os.chmod(path, 0o755)
        step("staging-created")
        made: set[Path] = {path}
        for rel in names:
            current_file = path / rel
            parent = current_file.parent
            if parent not in made:
                parent.mkdir(parents=True, exist_ok=True)
                made.add(parent)
            staged.bytes += _copy_file(members.root / rel, current_file)
            staged.files += 1
            step(f"copied:{rel}")
        current_file = path
        for d in sorted(made, key=lambda p: len(p.parts), reverse=True):  # entries first, then their parents
            current_file = d
            _fsync_dir(d)
        _fsync_dir(s)
    except OSError as exc:
        staged.close()
        writing = current_file.relative_to(path).as_posix() if current_file != path else "the staging directory"
        raise StoreError(
            f"staging {source} failed while writing {writing}: {_reason(exc)}; the current release is unchanged "
            "and the staging copy was deleted",
            path=str(exc.filename or current_file),
        ) from exc
    except BaseException:
        staged.close()
        raise
    log.info(
        "edge_runtime: store %s: staged %s (%d files, %d bytes) in %s", s, source, staged.files, staged.bytes, path.name
    )
    step("staged")
    return staged


# -- committing ----------------------------------------------------------------------------------


def _check_keep(keep: int) -> None:
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 2:
        raise ArgumentError(f"keep must be a whole number >= 2 (the current and the previous release), got {keep!r}")


def commit(
    store: str | os.PathLike[str],
    staged: StagedRelease,
    verified: VerifiedManifest,
    *,
    keep: int = KEEP,
    on_step: OnStep | None = None,
) -> Path:
    """Make the staged, verified release current and return its load path in ``releases/``.

    Under the store's lock: refuses a downgrade against the release current now
    (``VersionError``); renames the staging directory to ``releases/<name>`` (a release already
    there with the same name, i.e. the same signed manifest, is reused); points ``previous`` at
    the release that was current; switches ``current`` (atomic rename); deletes the oldest
    releases beyond ``keep`` (never the current or the previous one). Steps reported:
    ``release-renamed``, ``previous-linked``, ``current-switched``, ``trashed:<name>`` per
    release pruned, ``committed``. Committing the release that is already current changes
    nothing. ``StoreError`` on a filesystem failure: ``current`` changed only if the failure
    came after ``current-switched``. ``staged`` is closed on return or failure.
    """
    step = on_step or _no_step
    s = Path(store)
    _check_keep(keep)
    with staged:
        if staged.closed:
            raise ArgumentError("this staged release was already committed or closed", path=str(staged.path))
        if staged.store.resolve() != s.resolve():
            raise ArgumentError(f"the release was staged in another store ({staged.store})", path=str(s))
        if Path(verified.target) != staged.load_path:
            raise ArgumentError(
                f"the verified manifest is of {verified.target}, not of the staged release", path=str(staged.load_path)
            )
        name = release_name(verified)
        where: Path = s
        try:
            with _store_lock(s):
                installed = installed_version(s)
                if installed is not None and compare_versions(verified.model_version, installed) < 0:
                    raise VersionError(
                        f"downgrade refused: model_version {verified.model_version} is below the installed {installed}",
                        path=str(staged.source),
                    )
                old = _link_target(s, CURRENT)
                if old is not None and old.name == name:
                    log.info("edge_runtime: store %s: release %s is already current", s, name)
                    step("committed")
                    return load_path(old)
                dest = s / RELEASES / name
                where = dest
                if dest.is_dir():
                    log.info("edge_runtime: store %s: release %s is already in the store; reusing it", s, name)
                else:
                    os.rename(staged.path, dest)
                    staged._released()
                    _fsync_dir(s / RELEASES)
                    _fsync_dir(s)
                step("release-renamed")
                where = s / PREVIOUS
                if old is not None:
                    _switch_link(s, PREVIOUS, f"{RELEASES}/{old.name}")
                step("previous-linked")
                where = s / CURRENT
                _switch_link(s, CURRENT, f"{RELEASES}/{name}")
                log.info(
                    "edge_runtime: store %s: release %s is current (version %s; previous: %s)",
                    s,
                    name,
                    verified.model_version,
                    old.name if old is not None else "none",
                )
                step("current-switched")
                where = s / RELEASES
                _prune(s, keep, step)
        except OSError as exc:
            raise StoreError(f"commit of {name} failed: {_reason(exc)}", path=str(exc.filename or where)) from exc
    step("committed")
    return load_path(dest)


def _prune(store: Path, keep: int, step: OnStep) -> None:
    """Delete releases beyond ``keep``, oldest first (by directory mtime), never current or
    previous: each is first renamed to ``.trash-*`` (so ``releases/`` never holds half a
    release), then deleted."""
    protected = {p.name for p in (_link_target(store, CURRENT), _link_target(store, PREVIOUS)) if p is not None}
    others = [p for p in (store / RELEASES).iterdir() if p.name not in protected and p.is_dir()]
    others.sort(key=lambda p: (p.stat().st_mtime_ns, p.name), reverse=True)
    for release in others[max(0, keep - len(protected)) :]:
        fd = _lock_dir(release)  # taken before the rename: the flock follows the directory
        try:
            trash = store / f"{TRASH_PREFIX}{release.name}-{os.urandom(4).hex()}"
            os.rename(release, trash)
            _fsync_dir(store / RELEASES)
            _fsync_dir(store)
            step(f"trashed:{release.name}")
            shutil.rmtree(trash)
            log.info("edge_runtime: store %s: pruned release %s", store, release.name)
        finally:
            os.close(fd)


def rollback(store: str | os.PathLike[str], *, on_step: OnStep | None = None) -> Path:
    """Make the previous release current again (e.g. the new one failed to warm up after the
    swap) and return its load path. ``previous`` is then removed: the release rolled back
    from stays in ``releases/`` until pruned, and may be committed again. Step reported:
    ``current-switched``. ``StoreError`` when there is no previous release or on a
    filesystem failure (``current`` then unchanged)."""
    step = on_step or _no_step
    s = Path(store)
    try:
        with _store_lock(s):
            prev = _link_target(s, PREVIOUS)
            if prev is None:
                raise StoreError("no previous release to roll back to", path=str(s / PREVIOUS))
            old = _link_target(s, CURRENT)
            if old is not None and old.name == prev.name:  # a commit cut short between its two link switches
                raise StoreError("no previous release to roll back to: it is the current one", path=str(s / PREVIOUS))
            _switch_link(s, CURRENT, f"{RELEASES}/{prev.name}")
            step("current-switched")
            (s / PREVIOUS).unlink()
            _fsync_dir(s)
    except OSError as exc:
        raise StoreError(f"rollback failed: {_reason(exc)}", path=str(exc.filename or s)) from exc
    log.warning(
        "edge_runtime: store %s: rolled back from %s to %s", s, old.name if old is not None else "none", prev.name
    )
    return load_path(prev)


def apply_update(
    src: str | os.PathLike[str],
    store: str | os.PathLike[str],
    trusted_keys: Sequence[PublicKeyLike],
    probe: Probe,
    *,
    keep: int = KEEP,
    on_step: OnStep | None = None,
) -> Path:
    """Install the signed model file or bundle ``src`` into ``store`` and return the path of
    the new current release (what ``edge_runtime.load`` takes). In order, each step logged:

    1. ``stage`` a copy (steps ``staging-created``, ``copied:<path>``, ``staged``);
    2. ``verify`` the copy against ``trusted_keys``, refusing a downgrade against the installed
       version (``verified``); errors name the file in ``src``, not in the staging copy;
    3. ``probe(path)``, the caller's check of the staged copy, e.g. load it in a child process
       and warm it (``probed``); whatever it raises is passed on unchanged;
    4. ``commit`` (``release-renamed``, ``previous-linked``, ``current-switched``,
       ``trashed:<name>``..., ``committed``).

    A failure at any step deletes the staging copy and leaves ``current`` as it was.
    Raises ``SignatureError``/``VersionError`` (refused), ``StoreError`` (disk), ``ModelFileError``
    (``src``), ``ArgumentError`` (keys, ``keep``).
    """
    _check_keep(keep)
    step = on_step or _no_step
    s = Path(store)
    with stage(src, s, on_step=step) as staged:
        try:
            verified = verify(staged.load_path, trusted_keys, installed_version=installed_version(s))
        except (SignatureError, VersionError) as exc:
            raise type(exc)(exc.reason, path=staged.source_path(exc.path)) from exc
        log.info(
            "edge_runtime: store %s: verified %s: version %s, signed by key %s, %d files",
            s,
            src,
            verified.model_version,
            verified.key_id,
            len(verified.files),
        )
        step("verified")
        probe(staged.load_path)
        log.info("edge_runtime: store %s: probe passed for %s", s, src)
        step("probed")
        return commit(s, staged, verified, keep=keep, on_step=step)


# -- the updates inbox ---------------------------------------------------------------------------

#: The inbox's folder for refused updates: each moved here with a ``NAME.reason`` file beside it.
REJECTED = "rejected"
REASON_SUFFIX = ".reason"


@dataclass(frozen=True)
class InboxEntry:
    """One update waiting in an inbox: ``source`` is what ``apply_update`` takes (a bundle
    directory, or a model file), ``files`` every inbox entry that belongs to it (the bundle
    directory; or the model file with its ``.bin``, sidecar, manifest and signature present)."""

    name: str
    source: Path
    files: tuple[Path, ...]


def pending(inbox: str | os.PathLike[str]) -> list[InboxEntry]:
    """The updates waiting in ``inbox``, by name: every directory (a bundle) and every model file
    (``.tflite``, ``.xml``, ``.onnx``) with its companion files. Names starting with ``.`` (a copy
    still being written: write under a dot name, then rename it in) and ``rejected/`` are
    skipped; so are files that belong to no model file (they are left alone, logged at debug).
    An inbox that does not exist holds nothing. ``StoreError`` when it cannot be listed."""
    box = Path(inbox)
    try:
        names = sorted(os.listdir(box))
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise StoreError(f"cannot list the updates inbox: {_reason(exc)}", path=str(box)) from exc
    entries: list[InboxEntry] = []
    claimed: set[str] = set()
    for name in names:
        path = box / name
        if name.startswith(".") or name == REJECTED or name.endswith(REASON_SUFFIX):
            continue
        if path.is_dir():
            entries.append(InboxEntry(name, path, (path,)))
            claimed.add(name)
        elif path.suffix.lower() in MODEL_SUFFIXES:
            companions = [path.with_suffix(".json"), manifest_path(path), signature_path(manifest_path(path))]
            if path.suffix.lower() == ".xml":
                companions.append(path.with_suffix(".bin"))
            files = (path, *(c for c in companions if c.is_file()))
            entries.append(InboxEntry(name, path, files))
            claimed.update(f.name for f in files)
    for name in names:
        if not name.startswith(".") and name != REJECTED and name not in claimed:
            log.debug("edge_runtime: updates %s: %s belongs to no model file or bundle; left alone", box, name)
    return entries


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def remove_entry(entry: InboxEntry) -> None:
    """Delete an applied update's files from the inbox (fsynced). ``StoreError`` on failure."""
    try:
        for f in entry.files:
            _remove(f)
        _fsync_dir(entry.source.parent)
    except OSError as exc:
        raise StoreError(
            f"cannot remove the applied update: {_reason(exc)}", path=str(exc.filename or entry.source)
        ) from exc


def reject_entry(entry: InboxEntry, reason: str) -> Path:
    """Move a refused update's files into ``INBOX/rejected/`` (a rejected entry of the same name
    there before is replaced) and write ``rejected/NAME.reason`` (one line: why); return the
    reason file's path. It is not tried again. ``StoreError`` when the move fails."""
    box = entry.source.parent
    folder = box / REJECTED
    reason_file = folder / (entry.name + REASON_SUFFIX)
    try:
        folder.mkdir(exist_ok=True)
        for f in entry.files:
            dest = folder / f.name
            if os.path.lexists(dest):
                _remove(dest)
            os.rename(f, dest)
        tmp = folder / f".{reason_file.name}.new"
        tmp.write_text(reason.replace("\n", " ") + "\n", encoding="utf-8")
        os.replace(tmp, reason_file)
        _fsync_dir(folder)
        _fsync_dir(box)
    except OSError as exc:
        raise StoreError(
            f"cannot move the refused update to {REJECTED}/: {_reason(exc)}", path=str(exc.filename or box)
        ) from exc
    return reason_file


__all__ = [
    "KEEP",
    "InboxEntry",
    "OnStep",
    "Probe",
    "StagedRelease",
    "apply_update",
    "commit",
    "current",
    "installed_version",
    "load_path",
    "pending",
    "previous",
    "reject_entry",
    "release_name",
    "remove_entry",
    "rollback",
    "stage",
]
