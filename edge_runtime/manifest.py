"""Signed release manifests: which files make up a model or a bundle, at which version, and who
signed them (Ed25519), checked before any backend sees a byte.

Where the manifest lives (a detached signature beside it, as SWUpdate signs its
``sw-description`` with ``sw-description.sig``)::

    bundle directory:  DIR/manifest.json            DIR/manifest.json.sig
    model file:        DIR/MODEL.tflite.manifest.json  DIR/MODEL.tflite.manifest.json.sig

``manifest.json`` is canonical JSON: keys sorted, no whitespace (separators ``,`` and ``:``),
UTF-8, no trailing newline; ``verify`` refuses any other spelling of the same object, so one
manifest has exactly one byte string. Format, version 1::

    {"files": [{"path": "stage0.tflite", "sha256": "<64 hex>", "size": 9224}, ...],  # sorted by path
     "format": "edge_runtime.release", "version": 1,
     "key_id": "<16 hex: the first 64 bits of sha256 of the raw 32-byte public key>",
     "kind": "bundle" | "model",
     "model": null | "basicmotions_int8.tflite",       # kind "model": the model file's name
     "min_runtime_version": "0.1.0", "model_version": "1.2.0"}

``path`` is relative to the manifest's directory, POSIX separators, no ``.``/``..`` parts.
``manifest.json.sig`` holds the 64-byte raw Ed25519 signature of ``manifest.json``'s bytes as
stored. Key files are PEM: the private key PKCS#8 (file mode 0600), the public key
SubjectPublicKeyInfo; OpenSSL 3 reads both (``openssl pkeyutl -verify -pubin -inkey KEY.pub
-rawin -in manifest.json -sigfile manifest.json.sig``).

Which files a manifest covers (``member_files``): for a bundle, every file under the directory
but the manifest and its signature (an unlisted file is refused: a file mixed in from another
release, or added after signing); for a model file, the file, the ``.bin`` of an OpenVINO IR
``.xml``, and the JSON sidecar ``MODEL.json`` when there is one (labels and preprocessing
change results, so they are signed too).

Versions compare as PEP 440 versions (``packaging.version``) when ``packaging`` can be
imported, else as strict dotted integers (``1.10.2``); ``1.0`` equals ``1.0.0``.

Every function here is pure apart from reading (``verify``) or writing (``sign``,
``create_keypair``) the files it names; none keeps state, so the daemon can call them from
any thread. Files are hashed streaming, in ``CHUNK_BYTES`` pieces, each read once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import stat
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from . import __version__
from .errors import ArgumentError, EdgeRuntimeError, ModelFileError, SignatureError, VersionError

FORMAT = "edge_runtime.release"
VERSION = 1
#: The manifest's name inside a bundle directory; a model file's is ``MODEL.tflite`` + ``MODEL_SUFFIX``.
BUNDLE_MANIFEST = "manifest.json"
MODEL_SUFFIX = ".manifest.json"
SIGNATURE_SUFFIX = ".sig"
#: Names ``create_keypair`` gives the key files: ``NAME.key`` (private) and ``NAME.pub`` (public).
PRIVATE_SUFFIX = ".key"
PUBLIC_SUFFIX = ".pub"
#: Bytes read at a time while hashing (1 MiB): memory use does not grow with the model.
CHUNK_BYTES = 1 << 20
#: The largest manifest read (bytes): a manifest lists files, it is never big.
MAX_MANIFEST_BYTES = 16 << 20
SIGNATURE_BYTES = 64
MODEL_SUFFIXES = (".tflite", ".xml", ".onnx")
#: The bundle's own description, which must be among a bundle's files (see ``bundle.py``).
_BUNDLE_JSON = "bundle.json"

log = logging.getLogger("edge_runtime")

_KEYS = {"files", "format", "version", "key_id", "kind", "model", "min_runtime_version", "model_version"}
_FILE_KEYS = {"path", "sha256", "size"}
_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX16 = re.compile(r"[0-9a-f]{16}")
_DOTTED = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")

Kind = Literal["bundle", "model"]
PrivateKeyLike = str | os.PathLike[str] | Ed25519PrivateKey
PublicKeyLike = str | os.PathLike[str] | Ed25519PublicKey


# -- versions ----------------------------------------------------------------------------------


def _dotted_key(text: str) -> tuple[int, ...]:
    """``1.10.0`` -> (1, 10): strict dotted integers, trailing zeros dropped so 1.0 == 1.0.0."""
    if not _DOTTED.fullmatch(text):
        raise ValueError(
            f"{text!r} is not a dotted-integer version like 1.2.0 (install 'packaging' for PEP 440 versions)"
        )
    parts = [int(p) for p in text.split(".")]
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def _version_parser() -> Callable[[str], Any]:
    try:
        from packaging.version import InvalidVersion, Version
    except ImportError:
        return _dotted_key

    def parse(text: str) -> Any:
        try:
            return Version(text)
        except InvalidVersion:
            raise ValueError(f"{text!r} is not a version (PEP 440, e.g. 1.2.0 or 2024.11.3)") from None

    return parse


_parse_version = _version_parser()


def check_version(text: str, what: str = "version") -> str:
    """``text`` unchanged when it is a version this module can compare; else ``ArgumentError``
    naming ``what`` (e.g. ``--version``)."""
    if not isinstance(text, str) or not text:
        raise ArgumentError(f"{what} must be a non-empty version string, got {text!r}")
    try:
        _parse_version(text)
    except ValueError as exc:
        raise ArgumentError(f"{what}: {exc}") from None
    return text


def compare_versions(a: str, b: str) -> int:
    """-1, 0 or 1 as version ``a`` is below, equal to or above ``b``; ``ValueError`` when one
    does not parse."""
    va, vb = _parse_version(a), _parse_version(b)
    return int(va > vb) - int(va < vb)


# -- keys --------------------------------------------------------------------------------------


def key_id(public_key: Ed25519PublicKey) -> str:
    """16 hex digits: the first 64 bits of sha256 over the raw 32-byte public key."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def create_keypair(directory: str | os.PathLike[str], name: str = "signing") -> tuple[Path, Path]:
    """Make a new Ed25519 key pair in ``directory`` (created, mode 0700, when missing):
    ``NAME.key`` (private, PKCS#8 PEM, mode 0600) and ``NAME.pub`` (public, PEM, mode 0644).

    Returns (private path, public path). Refuses (``ArgumentError``) when either file already
    exists: a signing key is never overwritten. Nothing is left behind when it fails halfway.
    Keep the private key off the devices; they need only the ``.pub``.
    """
    if not name or "/" in name or name.startswith("."):
        raise ArgumentError(f"key name must be a plain file name, got {name!r}")
    folder = Path(directory)
    private_path, public_path = folder / (name + PRIVATE_SUFFIX), folder / (name + PUBLIC_SUFFIX)
    for p in (private_path, public_path):
        if os.path.lexists(p):
            raise ArgumentError("refusing to overwrite an existing key file", path=str(p))
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise EdgeRuntimeError(f"cannot create the key directory: {exc.strerror or exc}", path=str(folder)) from exc
    written: list[Path] = []
    try:
        for path, data, mode in ((private_path, private_pem, 0o600), (public_path, public_pem, 0o644)):
            _write_new(path, data, mode)
            written.append(path)
        _fsync_dir(folder)
    except FileExistsError as exc:
        for p in written:
            p.unlink(missing_ok=True)
        raise ArgumentError("refusing to overwrite an existing key file", path=exc.filename) from None
    except OSError as exc:
        for p in written:
            p.unlink(missing_ok=True)
        raise EdgeRuntimeError(
            f"cannot write the key: {exc.strerror or exc}", path=str(exc.filename or folder)
        ) from exc
    return private_path, public_path


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` (never replacing a file) with ``mode`` whatever the umask, write, fsync."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)


def _read_key_file(path: Path, which: str) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ArgumentError(f"no such {which} key file", path=str(path)) from None
    except IsADirectoryError:
        raise ArgumentError(f"{which} key is a directory, not a key file", path=str(path)) from None
    except OSError as exc:
        raise ArgumentError(f"cannot read the {which} key: {exc.strerror or exc}", path=str(path)) from exc
    if len(data) > 64 << 10:
        raise ArgumentError(f"not a {which} key: {len(data):,} bytes, far more than a PEM key", path=str(path))
    return data


def load_private_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """Read an unencrypted PKCS#8 PEM Ed25519 private key; ``ArgumentError`` naming the path and why not."""
    p = Path(path)
    data = _read_key_file(p, "private")
    if b"PUBLIC KEY" in data and b"PRIVATE KEY" not in data:
        raise ArgumentError("this is a public key: sign with the private .key file", path=str(p))
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        why = "encrypted: use an unencrypted key" if isinstance(exc, TypeError) else "no PEM private key in it"
        raise ArgumentError(
            f"not an unencrypted PEM private key ({why}; edge-runtime keys create writes one)", path=str(p)
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ArgumentError(f"not an Ed25519 key ({type(key).__name__})", path=str(p))
    if stat.S_IMODE(p.stat().st_mode) & 0o077:
        log.warning("edge_runtime: private key %s can be read by others than its owner: chmod 600 it", p)
    return key


def load_public_key(path: str | os.PathLike[str]) -> Ed25519PublicKey:
    """Read a PEM (SubjectPublicKeyInfo) Ed25519 public key; ``ArgumentError`` naming the path and why not.
    A private key is refused: a device should hold only the public half."""
    p = Path(path)
    data = _read_key_file(p, "public")
    if b"PRIVATE KEY" in data:
        raise ArgumentError("this is a private key: trust the .pub file, keep the .key off devices", path=str(p))
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ArgumentError(
            "not a PEM public key (-----BEGIN PUBLIC KEY-----; edge-runtime keys create writes one)", path=str(p)
        ) from exc
    if not isinstance(key, Ed25519PublicKey):
        raise ArgumentError(f"not an Ed25519 key ({type(key).__name__})", path=str(p))
    return key


# -- files -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ManifestFile:
    """One file of a release: ``path`` relative to the manifest's directory (POSIX), its sha256
    (64 lowercase hex digits) and its size in bytes."""

    path: str
    sha256: str
    size: int

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "sha256": self.sha256, "size": self.size}


@dataclass(frozen=True)
class Members:
    """What a model or bundle is made of on disk (see ``member_files``)."""

    kind: Kind
    root: Path  # the directory the relative paths and the manifest are in
    model: str | None  # kind "model": the model file's name
    files: tuple[str, ...]  # relative POSIX paths, sorted
    manifest: Path
    signature: Path


def manifest_path(target: str | os.PathLike[str]) -> Path:
    """Where the manifest of a model file or bundle directory is (whether or not it exists)."""
    p = Path(target)
    if p.is_dir():
        return p / BUNDLE_MANIFEST
    return p.with_name(p.name + MODEL_SUFFIX)


def signature_path(manifest: str | os.PathLike[str]) -> Path:
    """The detached signature beside ``manifest``: the same name plus ``.sig``."""
    p = Path(manifest)
    return p.with_name(p.name + SIGNATURE_SUFFIX)


def member_files(target: str | os.PathLike[str]) -> Members:
    """The files a manifest of ``target`` covers, as found on disk now.

    A directory: every file below it except its ``manifest.json`` and ``.sig`` (hidden files
    included; a link to a file counts as that file's content). A model file (``.tflite``,
    ``.xml``, ``.onnx``): itself, an IR's ``.bin``, and ``MODEL.json`` when present.
    Raises ``ModelFileError`` for a missing target, a special file, a link to a directory or a
    dangling link, or a file that is not a model.
    """
    p = Path(target)
    if p.is_dir():
        manifest = p / BUNDLE_MANIFEST
        skip = {BUNDLE_MANIFEST, BUNDLE_MANIFEST + SIGNATURE_SUFFIX}
        found: list[str] = []
        for dirpath, dirnames, filenames in os.walk(p, onerror=_walk_error):
            here = Path(dirpath)
            for d in dirnames:
                if (here / d).is_symlink():
                    raise ModelFileError("a link to a directory inside a bundle is not supported", path=str(here / d))
            for f in filenames:
                full = here / f
                rel = full.relative_to(p).as_posix()
                if rel in skip:
                    continue
                if not full.exists():
                    raise ModelFileError("dangling symbolic link", path=str(full))
                if not full.is_file():
                    raise ModelFileError("not a regular file (a device, fifo or socket)", path=str(full))
                found.append(rel)
        return Members("bundle", p, None, tuple(sorted(found)), manifest, signature_path(manifest))
    if not p.exists():
        raise ModelFileError("no such file or directory", path=str(p))
    if not p.is_file():
        raise ModelFileError("not a regular file", path=str(p))
    if p.suffix.lower() not in MODEL_SUFFIXES:
        raise ModelFileError(
            f"not a model file (suffix {p.suffix or 'none'!r}; expected {', '.join(MODEL_SUFFIXES)}) "
            "nor a bundle directory",
            path=str(p),
        )
    names = [p.name]
    if p.suffix.lower() == ".xml":
        weights = p.with_suffix(".bin")
        if not weights.is_file():
            raise ModelFileError(f"OpenVINO IR weights file {weights.name} is missing beside the .xml", path=str(p))
        names.append(weights.name)
    sidecar = p.with_suffix(".json")
    if sidecar.is_file():
        names.append(sidecar.name)
    manifest = manifest_path(p)
    return Members("model", p.parent, p.name, tuple(sorted(names)), manifest, signature_path(manifest))


def _walk_error(exc: OSError) -> None:
    raise ModelFileError(f"cannot list the bundle: {exc.strerror or exc}", path=exc.filename) from exc


def hash_file(path: str | os.PathLike[str], expected_size: int | None = None) -> tuple[str, int]:
    """(sha256 hex, size in bytes) of ``path``, read once in ``CHUNK_BYTES`` pieces.

    With ``expected_size``, a file of another size is refused before it is read
    (``SignatureError``). Other read failures raise ``ModelFileError``; both name the path.
    """
    digest = hashlib.sha256()
    size = 0
    try:
        with open(path, "rb") as fh:
            if expected_size is not None:
                actual = os.fstat(fh.fileno()).st_size
                if actual != expected_size:
                    raise SignatureError(
                        f"size differs from the signed manifest: {actual:,} bytes, the manifest says "
                        f"{expected_size:,} (changed after signing, or mixed in from another release)",
                        path=str(path),
                    )
            while chunk := fh.read(CHUNK_BYTES):
                digest.update(chunk)
                size += len(chunk)
    except OSError as exc:
        raise ModelFileError(f"cannot read: {exc.strerror or exc}", path=str(path)) from exc
    return digest.hexdigest(), size


# -- the manifest ------------------------------------------------------------------------------


def canonical_bytes(manifest: dict[str, Any]) -> bytes:
    """The one byte string of ``manifest``: JSON, keys sorted, no whitespace, UTF-8."""
    return json.dumps(manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


@dataclass(frozen=True)
class VerifiedManifest:
    """A manifest whose signature, versions and files ``verify`` checked. Plain values, no open
    files: safe to keep and hand to another thread.

    ``target``: the model file or bundle directory verified; ``load_path`` is the same path
    (what ``edge_runtime.load`` takes). ``digest``: sha256 hex of the manifest's bytes (names
    a release uniquely). ``key_path``: the trusted key file that matched (None for a key object).
    """

    target: Path
    kind: Kind
    manifest: Path
    signature: Path
    model_version: str
    min_runtime_version: str
    key_id: str
    key_path: Path | None
    files: tuple[ManifestFile, ...]
    digest: str

    @property
    def load_path(self) -> Path:
        return self.target

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": str(self.target),
            "kind": self.kind,
            "manifest": str(self.manifest),
            "signature": str(self.signature),
            "model_version": self.model_version,
            "min_runtime_version": self.min_runtime_version,
            "runtime_version": __version__,
            "key_id": self.key_id,
            "key_path": None if self.key_path is None else str(self.key_path),
            "digest": self.digest,
            "files": [f.to_dict() for f in self.files],
            "total_bytes": self.total_bytes,
        }


def sign(
    target: str | os.PathLike[str],
    private_key: PrivateKeyLike,
    model_version: str,
    min_runtime_version: str | None = None,
) -> Path:
    """Hash every member file of ``target`` (a model file or bundle directory), write its
    manifest and detached signature beside it (each atomically: temp file, fsync, rename;
    a manifest there before is replaced) and return the manifest's path.

    ``private_key``: an ``Ed25519PrivateKey`` or the path of its PEM file.
    ``min_runtime_version``: the oldest edge_runtime that may install it (default: this one's,
    ``edge_runtime.__version__``). A bundle's ``bundle.json`` is checked first (``ModelFileError``).
    Raises ``ArgumentError`` for a bad version or key, ``ModelFileError`` for a bad target,
    ``EdgeRuntimeError`` when the manifest cannot be written.
    """
    check_version(model_version, "model_version")
    min_runtime = check_version(min_runtime_version or __version__, "min_runtime_version")
    key = private_key if isinstance(private_key, Ed25519PrivateKey) else load_private_key(private_key)
    members = member_files(target)
    if members.kind == "bundle":
        from .bundle import read_manifest  # checks bundle.json and that each stage file is there

        read_manifest(members.root)
    entries = []
    for rel in members.files:
        sha, size = hash_file(members.root / rel)
        entries.append(ManifestFile(rel, sha, size).to_dict())
    doc = {
        "files": entries,
        "format": FORMAT,
        "version": VERSION,
        "key_id": key_id(key.public_key()),
        "kind": members.kind,
        "model": members.model,
        "min_runtime_version": min_runtime,
        "model_version": model_version,
    }
    data = canonical_bytes(doc)
    signature = key.sign(data)
    try:
        _write_atomic(members.signature, signature)
        _write_atomic(members.manifest, data)
    except OSError as exc:
        raise EdgeRuntimeError(
            f"cannot write the manifest: {exc.strerror or exc}", path=str(exc.filename or members.manifest)
        ) from exc
    return members.manifest


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix="." + path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        try:
            os.fchmod(fd, 0o644)
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _trusted(keys: Iterable[PublicKeyLike]) -> dict[str, tuple[Ed25519PublicKey, Path | None]]:
    out: dict[str, tuple[Ed25519PublicKey, Path | None]] = {}
    for k in keys:
        if isinstance(k, Ed25519PublicKey):
            out[key_id(k)] = (k, None)
        else:
            pub = load_public_key(k)
            out.setdefault(key_id(pub), (pub, Path(k)))
    if not out:
        raise ArgumentError("no trusted public key given: verifying needs at least one")
    return out


def _read_small(path: Path, what: str, limit: int) -> bytes:
    try:
        with open(path, "rb") as fh:
            data = fh.read(limit + 1)
    except OSError as exc:
        raise SignatureError(f"cannot read the {what}: {exc.strerror or exc}", path=str(path)) from exc
    if len(data) > limit:
        raise SignatureError(f"the {what} is larger than {limit:,} bytes: not a manifest", path=str(path))
    return data


def _field(doc: dict[str, Any], key: str, kind: type, where: Path) -> Any:
    value = doc.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise SignatureError(f"malformed manifest: {key} must be a {kind.__name__}, got {value!r}", path=str(where))
    return value


def _parse(doc: Any, where: Path) -> tuple[Kind, str | None, str, str, tuple[ManifestFile, ...]]:
    """Check a signed manifest's structure; (kind, model, model_version, min_runtime, files)."""
    if not isinstance(doc, dict):
        raise SignatureError("malformed manifest: not a JSON object", path=str(where))
    if doc.get("format") != FORMAT:
        raise SignatureError(f"malformed manifest: format {doc.get('format')!r}, expected {FORMAT!r}", path=str(where))
    version = _field(doc, "version", int, where)
    if version != VERSION:
        raise SignatureError(
            f"manifest version {version}; this edge_runtime reads version {VERSION}"
            + (": upgrade edge_runtime" if version > VERSION else ""),
            path=str(where),
        )
    unknown = sorted(set(doc) - _KEYS)
    if unknown:
        raise SignatureError(f"malformed manifest: unknown key(s) {unknown}", path=str(where))
    kind = doc.get("kind")
    if kind not in ("bundle", "model"):
        raise SignatureError(f"malformed manifest: kind {kind!r} is not 'bundle' or 'model'", path=str(where))
    model = doc.get("model")
    if (kind == "model") != isinstance(model, str):
        raise SignatureError(
            "malformed manifest: model must name the file for kind 'model', else null", path=str(where)
        )
    versions = []
    for key in ("model_version", "min_runtime_version"):
        text = _field(doc, key, str, where)
        try:
            _parse_version(text)
        except ValueError as exc:
            raise SignatureError(f"malformed manifest: {key}: {exc}", path=str(where)) from None
        versions.append(text)
    raw_files = _field(doc, "files", list, where)
    files = []
    for i, f in enumerate(raw_files):
        if not isinstance(f, dict) or set(f) != _FILE_KEYS:
            raise SignatureError(
                f"malformed manifest: files[{i}] must hold exactly {sorted(_FILE_KEYS)}", path=str(where)
            )
        rel, sha, size = f["path"], f["sha256"], f["size"]
        if not isinstance(rel, str) or not _safe_relative(rel):
            raise SignatureError(
                f"malformed manifest: files[{i}].path {rel!r} is not a plain relative path", path=str(where)
            )
        if not isinstance(sha, str) or not _HEX64.fullmatch(sha):
            raise SignatureError(f"malformed manifest: files[{i}].sha256 is not 64 hex digits", path=str(where))
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise SignatureError(f"malformed manifest: files[{i}].size {size!r} is not a byte count", path=str(where))
        files.append(ManifestFile(rel, sha, size))
    paths = [f.path for f in files]
    if len(set(paths)) != len(paths):
        raise SignatureError("malformed manifest: a file is listed twice", path=str(where))
    return kind, model, versions[0], versions[1], tuple(files)


def _safe_relative(rel: str) -> bool:
    if not rel or rel.startswith("/") or "\\" in rel or "\0" in rel:
        return False
    parts = PurePosixPath(rel).parts
    return PurePosixPath(*parts).as_posix() == rel and all(p not in (".", "..") for p in parts)


def verify(
    target: str | os.PathLike[str],
    trusted_public_keys: Sequence[PublicKeyLike],
    installed_version: str | None = None,
) -> VerifiedManifest:
    """Check that ``target`` (a model file or bundle directory) is exactly a release signed by
    one of ``trusted_public_keys`` (``Ed25519PublicKey`` objects or PEM file paths), and that
    this runtime may install it. Reads the manifest and signature, then each listed file once.

    Refuses, naming the path and the reason:
    ``SignatureError``: no manifest (unsigned) or no signature; a key id that no trusted key
    has; a signature that does not verify; a manifest that is malformed or not canonical; the
    manifest of another model file; a listed file missing, of another size or sha256 (which
    file: tampered, or mixed in from another release); a file not listed (an extra file).
    ``VersionError``: ``min_runtime_version`` above ``edge_runtime.__version__``, or, given
    ``installed_version``, a ``model_version`` below it (equal is allowed: a re-install).
    ``ArgumentError``: no trusted key, or a key file that is not an Ed25519 public key;
    ``installed_version`` that is not a version. ``ModelFileError``: ``target`` missing.
    """
    if installed_version is not None:
        check_version(installed_version, "installed_version")
    trusted = _trusted(trusted_public_keys)
    members = member_files(target)
    where = members.manifest
    if not where.is_file():
        raise SignatureError(
            f"unsigned: no signed manifest {where.name} beside it (sign it with: edge-runtime sign)",
            path=str(Path(target)),
        )
    data = _read_small(where, "manifest", MAX_MANIFEST_BYTES)
    if not members.signature.is_file():
        raise SignatureError(f"the manifest has no signature: {members.signature.name} is missing", path=str(where))
    sig = _read_small(members.signature, "signature", SIGNATURE_BYTES)
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise SignatureError(f"malformed manifest: not UTF-8 JSON: {exc}", path=str(where)) from None
    kid = doc.get("key_id") if isinstance(doc, dict) else None
    if not isinstance(kid, str) or not _HEX16.fullmatch(kid):
        raise SignatureError(f"malformed manifest: key_id {kid!r} is not 16 hex digits", path=str(where))
    if kid not in trusted:
        raise SignatureError(
            f"signed by key {kid}, which is not a trusted key (trusted: {', '.join(sorted(trusted))})", path=str(where)
        )
    public, key_file = trusted[kid]
    try:
        if len(sig) != SIGNATURE_BYTES:
            raise InvalidSignature
        public.verify(sig, data)
    except InvalidSignature:
        raise SignatureError(
            f"bad signature: the manifest does not verify with trusted key {kid} (changed after signing, "
            f"or {members.signature.name} belongs to another manifest)",
            path=str(where),
        ) from None
    if canonical_bytes(doc) != data:
        raise SignatureError("malformed manifest: not in canonical form (sorted keys, no whitespace)", path=str(where))
    kind, model, model_version, min_runtime, files = _parse(doc, where)
    if kind != members.kind or model != members.model:
        signed_for = f"the model file {model}" if kind == "model" else "a bundle directory"
        raise SignatureError(f"the manifest was signed for {signed_for}, not for this {members.kind}", path=str(where))
    if compare_versions(min_runtime, __version__) > 0:
        raise VersionError(
            f"needs edge_runtime >= {min_runtime} (min_runtime_version); this is {__version__}: upgrade edge_runtime",
            path=str(where),
        )
    if installed_version is not None and compare_versions(model_version, installed_version) < 0:
        raise VersionError(
            f"downgrade refused: model_version {model_version} is below the installed {installed_version}",
            path=str(where),
        )
    listed = {f.path for f in files}
    extra = sorted(set(members.files) - listed)
    if extra:
        raise SignatureError(
            f"{extra[0]} is not listed in the signed manifest (added after signing, or mixed in from another "
            f"release){f'; {len(extra) - 1} more unlisted' if len(extra) > 1 else ''}",
            path=str(members.root / extra[0]),
        )
    for f in files:
        full = members.root / f.path
        if f.path not in members.files:
            raise SignatureError(f"{f.path}, listed in the signed manifest, is missing", path=str(full))
        sha, size = hash_file(full, expected_size=f.size)
        if size != f.size:  # the file changed while it was read
            raise SignatureError(
                f"size changed while reading: {size:,} bytes, manifest says {f.size:,}", path=str(full)
            )
        if sha != f.sha256:
            raise SignatureError(
                f"sha256 differs from the signed manifest: {sha[:16]}..., the manifest says {f.sha256[:16]}... "
                "(tampered, or mixed in from another release)",
                path=str(full),
            )
    return VerifiedManifest(
        target=Path(target),
        kind=kind,
        manifest=where,
        signature=members.signature,
        model_version=model_version,
        min_runtime_version=min_runtime,
        key_id=kid,
        key_path=key_file,
        files=files,
        digest=hashlib.sha256(data).hexdigest(),
    )


def read_unverified(manifest: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest's JSON object, signature NOT checked: for a store's own committed releases
    (already verified when committed), never for files from outside. ``SignatureError`` when unreadable."""
    p = Path(manifest)
    try:
        doc = json.loads(_read_small(p, "manifest", MAX_MANIFEST_BYTES).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise SignatureError(f"malformed manifest: {exc}", path=str(p)) from None
    if not isinstance(doc, dict):
        raise SignatureError("malformed manifest: not a JSON object", path=str(p))
    return doc
