"""Signed manifests (``edge_runtime.manifest``) with real Ed25519 keys and real model files:
the shipped basicmotions model with its sidecar, and the digits early-exit bundle, each
copied into the test's own folder first. Also the ``keys create``/``sign``/``verify`` verbs,
run as a user runs them."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import pytest
from conftest import MODELS, Cli

import edge_runtime
from edge_runtime import manifest as mf
from edge_runtime.errors import ArgumentError, EdgeRuntimeError, ModelFileError, SignatureError, VersionError

BUNDLE = MODELS / "digits_early_exit"
MOTIONS = MODELS / "basicmotions_int8.tflite"


class Keys(NamedTuple):
    private: Path
    public: Path
    other_private: Path
    other_public: Path


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    folder = tmp_path_factory.mktemp("keys")
    private, public = mf.create_keypair(folder / "release")
    other_private, other_public = mf.create_keypair(folder / "other")
    return Keys(private, public, other_private, other_public)


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    return Path(shutil.copytree(BUNDLE, tmp_path / "bundle"))


@pytest.fixture
def model(tmp_path: Path) -> Path:
    """basicmotions_int8.tflite and its sidecar basicmotions_int8.json (the shipped ones are links)."""
    folder = tmp_path / "model"
    folder.mkdir()
    for src in (MOTIONS, MOTIONS.with_suffix(".json")):
        shutil.copyfile(src, folder / src.name)
    return folder / MOTIONS.name


def flip_byte(path: Path, offset: int = 100) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def refused(exc_type: type[EdgeRuntimeError], target: Path, keys: Keys, match: str, **kw: str) -> EdgeRuntimeError:
    with pytest.raises(exc_type, match=match) as info:
        mf.verify(target, [keys.public], **kw)
    return info.value


# -- happy path ----------------------------------------------------------------------------------


def test_sign_and_verify_a_bundle(bundle: Path, keys: Keys) -> None:
    path = mf.sign(bundle, keys.private, "1.2.0", "0.1.0")
    assert path == bundle / "manifest.json"
    raw = path.read_bytes()
    doc = json.loads(raw)
    assert raw == json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()  # canonical, no whitespace
    assert len((bundle / "manifest.json.sig").read_bytes()) == 64
    v = mf.verify(bundle, [keys.other_public, keys.public])
    on_disk = sorted(p.name for p in BUNDLE.iterdir() if p.is_file())
    assert [f.path for f in v.files] == on_disk
    assert (v.kind, v.model_version, v.min_runtime_version, v.key_path) == ("bundle", "1.2.0", "0.1.0", keys.public)
    assert v.key_id == mf.key_id(mf.load_public_key(keys.public)) == doc["key_id"]
    assert v.total_bytes == sum((BUNDLE / n).stat().st_size for n in on_disk)
    assert v.to_dict()["runtime_version"] == edge_runtime.__version__
    with edge_runtime.load(bundle, "cpu") as runner:  # the manifest files beside bundle.json change nothing
        assert len(runner.inputs) == 1


def test_sign_and_verify_a_model_file_with_its_sidecar(model: Path, keys: Keys) -> None:
    path = mf.sign(model, mf.load_private_key(keys.private), "2024.11.3")
    assert path == model.with_name("basicmotions_int8.tflite.manifest.json")
    v = mf.verify(model, [mf.load_public_key(keys.public)])
    assert [f.path for f in v.files] == ["basicmotions_int8.json", "basicmotions_int8.tflite"]
    assert v.kind == "model" and v.min_runtime_version == edge_runtime.__version__  # the default
    assert v.files[1].sha256 == json.loads(model.with_suffix(".json").read_text())["sha256"]
    assert v.key_path is None  # a key object, not a file


def test_re_signing_replaces_the_manifest(bundle: Path, keys: Keys) -> None:
    mf.sign(bundle, keys.private, "1.0")
    mf.sign(bundle, keys.other_private, "1.1")
    v = mf.verify(bundle, [keys.other_public])
    assert v.model_version == "1.1"
    assert not [p for p in bundle.iterdir() if p.name.endswith(".tmp")]


# -- refusals ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind, name", [("bundle", "stage1.tflite"), ("bundle", "bundle.json"), ("model", "basicmotions_int8.tflite")]
)
def test_a_tampered_byte_names_the_file(kind: str, name: str, bundle: Path, model: Path, keys: Keys) -> None:
    target = bundle if kind == "bundle" else model
    mf.sign(target, keys.private, "1.0.0")
    root = target if kind == "bundle" else target.parent
    flip_byte(root / name, 20)
    err = refused(SignatureError, target, keys, "sha256 differs from the signed manifest")
    assert err.path == str(root / name)


def test_a_tampered_sidecar_is_refused(model: Path, keys: Keys) -> None:
    mf.sign(model, keys.private, "1.0.0")
    sidecar = model.with_suffix(".json")
    sidecar.write_text(sidecar.read_text().replace('"badminton"', '"tennis"'))
    err = refused(SignatureError, model, keys, "size differs|sha256 differs")
    assert err.path == str(sidecar)


def test_a_truncated_file_is_refused_on_its_size(bundle: Path, keys: Keys) -> None:
    mf.sign(bundle, keys.private, "1.0.0")
    stage = bundle / "stage2.bin"
    stage.write_bytes(stage.read_bytes()[:-1])
    err = refused(SignatureError, bundle, keys, r"size differs from the signed manifest: 579,031 bytes, .* 579,032")
    assert err.path == str(stage)


def test_a_changed_manifest_fails_its_signature(bundle: Path, keys: Keys) -> None:
    path = mf.sign(bundle, keys.private, "1.0.0")
    path.write_bytes(path.read_bytes().replace(b'"model_version":"1.0.0"', b'"model_version":"9.0.0"'))
    err = refused(SignatureError, bundle, keys, "bad signature")
    assert err.path == str(path)


def test_wrong_key_is_not_trusted(bundle: Path, keys: Keys) -> None:
    mf.sign(bundle, keys.other_private, "1.0.0")
    other_id = mf.key_id(mf.load_public_key(keys.other_public))
    refused(SignatureError, bundle, keys, f"signed by key {other_id}, which is not a trusted key")


def test_a_trusted_key_id_on_another_keys_signature_fails(bundle: Path, keys: Keys) -> None:
    """An attacker with their own key writes the trusted key's id into the manifest: the
    trusted key is then used, and the signature does not verify with it."""
    path = mf.sign(bundle, keys.other_private, "1.0.0")
    doc = json.loads(path.read_bytes())
    doc["key_id"] = mf.key_id(mf.load_public_key(keys.public))
    data = mf.canonical_bytes(doc)
    path.write_bytes(data)
    mf.signature_path(path).write_bytes(mf.load_private_key(keys.other_private).sign(data))
    refused(SignatureError, bundle, keys, "bad signature")


def test_a_non_canonical_manifest_is_refused_even_when_signed(bundle: Path, keys: Keys) -> None:
    path = mf.sign(bundle, keys.private, "1.0.0")
    data = json.dumps(json.loads(path.read_bytes()), indent=1).encode()
    path.write_bytes(data)
    mf.signature_path(path).write_bytes(mf.load_private_key(keys.private).sign(data))
    refused(SignatureError, bundle, keys, "not in canonical form")


def test_unsigned_and_unsigned_signature(bundle: Path, model: Path, keys: Keys) -> None:
    err = refused(SignatureError, bundle, keys, "unsigned: no signed manifest manifest.json")
    assert err.path == str(bundle)
    refused(SignatureError, model, keys, "unsigned: no signed manifest basicmotions_int8.tflite.manifest.json")
    path = mf.sign(bundle, keys.private, "1.0.0")
    mf.signature_path(path).unlink()
    refused(SignatureError, bundle, keys, "the manifest has no signature: manifest.json.sig is missing")


def _release(src: Path, dst: Path, version: str, private: Path, threshold: float | None = None) -> Path:
    """A signed copy of bundle ``src``; with ``threshold``, its first exit's threshold changed
    (as a new calibration would), so its bundle.json differs from the other release's (the
    same size with a threshold of as many digits: the sha256 tells them apart)."""
    out = Path(shutil.copytree(src, dst))
    for p in (out / "manifest.json", out / "manifest.json.sig"):
        p.unlink(missing_ok=True)
    if threshold is not None:
        raw = json.loads((out / "bundle.json").read_text())
        raw["stages"][0]["exit"]["threshold"] = threshold
        (out / "bundle.json").write_text(json.dumps(raw, indent=2) + "\n")
    mf.sign(out, private, version)
    return out


def test_files_mixed_from_two_signed_releases(bundle: Path, tmp_path: Path, keys: Keys) -> None:
    one = _release(bundle, tmp_path / "one", "1.0.0", keys.private)
    two = _release(bundle, tmp_path / "two", "1.1.0", keys.private, threshold=0.602477)
    mf.verify(one, [keys.public])
    mf.verify(two, [keys.public])
    # release 2's files with release 1's bundle.json ...
    shutil.copyfile(one / "bundle.json", two / "bundle.json")
    err = refused(SignatureError, two, keys, "sha256 differs .*mixed in from another release")
    assert err.path == str(two / "bundle.json")
    # ... and release 1's signed manifest over release 2's files
    three = _release(bundle, tmp_path / "three", "1.1.0", keys.private, threshold=0.602477)
    for name in ("manifest.json", "manifest.json.sig"):
        shutil.copyfile(one / name, three / name)
    err = refused(SignatureError, three, keys, "sha256 differs .*mixed in from another release")
    assert err.path == str(three / "bundle.json")


def test_an_extra_file_is_refused(bundle: Path, model: Path, keys: Keys) -> None:
    mf.sign(bundle, keys.private, "1.0.0")
    shutil.copyfile(bundle / "stage2.tflite", bundle / "stage3.tflite")
    err = refused(SignatureError, bundle, keys, "stage3.tflite is not listed in the signed manifest")
    assert err.path == str(bundle / "stage3.tflite")
    (bundle / "stage3.tflite").unlink()
    (bundle / "sub").mkdir()
    (bundle / "sub" / "extra.bin").write_bytes(b"x")
    refused(SignatureError, bundle, keys, "sub/extra.bin is not listed")
    # a model signed without a sidecar, which appears later: labels and preprocessing changed
    sidecar = model.with_suffix(".json")
    content = sidecar.read_bytes()
    sidecar.unlink()
    mf.sign(model, keys.private, "1.0.0")
    sidecar.write_bytes(content)
    refused(SignatureError, model, keys, "basicmotions_int8.json is not listed")


def test_a_listed_file_that_is_missing(bundle: Path, keys: Keys) -> None:
    mf.sign(bundle, keys.private, "1.0.0")
    (bundle / "stage0.xml").unlink()
    err = refused(SignatureError, bundle, keys, "stage0.xml, listed in the signed manifest, is missing")
    assert err.path == str(bundle / "stage0.xml")


def test_a_model_manifest_moved_to_another_model(model: Path, keys: Keys) -> None:
    mf.sign(model, keys.private, "1.0.0")
    other = model.with_name("renamed.tflite")
    shutil.copyfile(model, other)
    for p in (mf.manifest_path(model), mf.signature_path(mf.manifest_path(model))):
        shutil.copyfile(p, other.with_name(p.name.replace(model.name, other.name)))
    refused(SignatureError, other, keys, "signed for the model file basicmotions_int8.tflite, not for this model")


@pytest.mark.parametrize(
    "installed, ok",
    [("1.3", False), ("1.2.1", False), ("1.2.0", True), ("1.2", True), ("1.1.9", True), ("0.9", True)],
)
def test_downgrade_refused_equal_allowed(installed: str, ok: bool, bundle: Path, keys: Keys) -> None:
    mf.sign(bundle, keys.private, "1.2.0")
    if ok:
        assert mf.verify(bundle, [keys.public], installed_version=installed).model_version == "1.2.0"
    else:
        refused(
            VersionError,
            bundle,
            keys,
            f"downgrade refused: model_version 1.2.0 is below the installed {installed}",
            installed_version=installed,
        )


def test_min_runtime_above_this_runtime(model: Path, keys: Keys) -> None:
    mf.sign(model, keys.private, "1.0.0", min_runtime_version=edge_runtime.__version__)
    mf.verify(model, [keys.public])
    mf.sign(model, keys.private, "1.0.0", min_runtime_version="99.0")
    err = refused(
        VersionError, model, keys, rf"needs edge_runtime >= 99.0 .*this is {re.escape(edge_runtime.__version__)}"
    )
    assert err.path == str(mf.manifest_path(model))


def test_a_bad_signature_is_reported_before_versions(bundle: Path, keys: Keys) -> None:
    """A bad signature is reported as such, never as a version problem."""
    path = mf.sign(bundle, keys.private, "1.0.0", "99.0")
    path.write_bytes(path.read_bytes().replace(b"99.0", b"0.0.1"))
    refused(SignatureError, bundle, keys, "bad signature")


# -- arguments, keys, versions ---------------------------------------------------------------------


def test_create_keypair_modes_and_no_overwrite(tmp_path: Path) -> None:
    private, public = mf.create_keypair(tmp_path / "k", "ci")
    assert (private.name, public.name) == ("ci.key", "ci.pub")
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "k").stat().st_mode) == 0o700
    assert b"BEGIN PRIVATE KEY" in private.read_bytes() and b"BEGIN PUBLIC KEY" in public.read_bytes()
    before = private.read_bytes()
    with pytest.raises(ArgumentError, match="refusing to overwrite an existing key file") as info:
        mf.create_keypair(tmp_path / "k", "ci")
    assert info.value.path == str(private)
    assert private.read_bytes() == before
    public.unlink()  # only the public half is there: still refused, and nothing is half-written
    with pytest.raises(ArgumentError, match="refusing to overwrite"):
        mf.create_keypair(tmp_path / "k", "ci")
    assert not public.exists()


def test_key_files_are_checked(keys: Keys, tmp_path: Path) -> None:
    with pytest.raises(ArgumentError, match=r"this is a private key: trust the \.pub file"):
        mf.load_public_key(keys.private)
    with pytest.raises(ArgumentError, match=r"this is a public key: sign with the private \.key file"):
        mf.load_private_key(keys.public)
    with pytest.raises(ArgumentError, match="no such public key file"):
        mf.load_public_key(tmp_path / "absent.pub")
    junk = tmp_path / "junk.pub"
    junk.write_text("not a key\n")
    with pytest.raises(ArgumentError, match="not a PEM public key"):
        mf.load_public_key(junk)
    with pytest.raises(ArgumentError, match="no trusted public key given"):
        mf.verify(MOTIONS, [])


def test_bad_targets_and_versions(tmp_path: Path, keys: Keys, bundle: Path) -> None:
    with pytest.raises(ModelFileError, match="no such file or directory"):
        mf.sign(tmp_path / "absent.tflite", keys.private, "1.0")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ModelFileError, match="not a model file"):
        mf.sign(tmp_path / "notes.txt", keys.private, "1.0")
    with pytest.raises(ArgumentError, match=r"model_version: '1\.x' is not a version"):
        mf.sign(bundle, keys.private, "1.x")
    with pytest.raises(ArgumentError, match="min_runtime_version"):
        mf.sign(bundle, keys.private, "1.0", "latest")
    (bundle / "bundle.json").unlink()
    with pytest.raises(ModelFileError, match=r"no bundle\.json"):
        mf.sign(bundle, keys.private, "1.0")


@pytest.mark.parametrize(
    "a, b, expected",
    [("1.0", "1.0.0", 0), ("1.10", "1.9", 1), ("0.1.0", "0.2", -1), ("2", "10", -1), ("1.0.0rc1", "1.0.0", -1)],
)
def test_compare_versions(a: str, b: str, expected: int) -> None:
    assert mf.compare_versions(a, b) == expected


def test_dotted_integer_fallback() -> None:
    """Without ``packaging``, versions are strict dotted integers; 1.0 equals 1.0.0."""
    assert mf._dotted_key("1.0.0") == mf._dotted_key("1") == (1,)
    assert mf._dotted_key("1.10") > mf._dotted_key("1.9")
    for bad in ("1.0rc1", "01.2", "1..2", "", "v1"):
        with pytest.raises(ValueError, match="not a dotted-integer version"):
            mf._dotted_key(bad)


def test_hash_file_streams_in_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each read asks for at most CHUNK_BYTES: memory use does not grow with the file."""
    import hashlib

    path = tmp_path / "big.bin"
    data = os.urandom(3 * 4096 + 17)
    path.write_bytes(data)
    monkeypatch.setattr(mf, "CHUNK_BYTES", 4096)
    assert mf.hash_file(path) == (hashlib.sha256(data).hexdigest(), len(data))


# -- the command line ------------------------------------------------------------------------------


def test_cli_round_trip(cli: Cli, tmp_path: Path, bundle: Path) -> None:
    made = cli("keys", "create", tmp_path / "keys", "--json")
    assert made.returncode == 0, made.stderr
    info = json.loads(made.stdout)
    assert stat.S_IMODE(Path(info["private_key"]).stat().st_mode) == 0o600
    signed = cli("sign", bundle, "--key", info["private_key"], "--version", "3.1.4", "--min-runtime", "0.1")
    assert signed.returncode == 0, signed.stderr
    assert f"key id {info['key_id']}" in signed.stdout and "version:   3.1.4" in signed.stdout
    checked = cli("verify", bundle, "--trusted", info["public_key"])
    assert checked.returncode == 0, checked.stderr
    assert "signature: " in checked.stdout and "every listed file matches" in checked.stdout
    for name in ("bundle.json", "stage2.tflite", "test.npz"):
        assert re.search(rf"^{re.escape(name)}\s+[\d,]+\s+[0-9a-f]{{64}}$", checked.stdout, re.M), name
    as_json = json.loads(
        cli("verify", bundle, "--trusted", info["public_key"], "--json", "--installed", "3.1.4").stdout
    )
    assert (as_json["model_version"], as_json["key_id"]) == ("3.1.4", info["key_id"])
    flip_byte(bundle / "stage0.tflite", 40)
    bad = cli("verify", bundle, "--trusted", info["public_key"])
    assert bad.returncode == 1 and bad.stdout == ""
    (line,) = bad.stderr.splitlines()
    assert line.startswith("edge-runtime: error: sha256 differs from the signed manifest")
    assert line.endswith(f"[path={bundle / 'stage0.tflite'}]")


class Row(NamedTuple):
    args: tuple[str, ...]  # {tmp}: the test's folder; {key}/{pub}: a made key pair; {bundle}: a signed bundle
    status: int
    phrase: str


CLI_ROWS: dict[str, Row] = {
    "keys without action": Row(("keys",), 2, "required: ACTION"),
    "keys misspelt action": Row(("keys", "craete", "{tmp}/k"), 2, "invalid choice: 'craete'"),
    "keys create over a key": Row(("keys", "create", "{keydir}"), 2, "refusing to overwrite an existing key file"),
    "keys create into a file": Row(("keys", "create", "{bundle}/bundle.json"), 1, "cannot create the key directory"),
    "sign without --key": Row(("sign", "{bundle}", "--version", "1"), 2, "required: --key"),
    "sign without --version": Row(("sign", "{bundle}", "--key", "{key}"), 2, "required: --version"),
    "sign --key missing": Row(("sign", "{bundle}", "--key", "{tmp}/nope.key", "--version", "1"), 2, "--key: no such"),
    "sign --key public": Row(("sign", "{bundle}", "--key", "{pub}", "--version", "1"), 2, "this is a public key"),
    "sign --version typo": Row(("sign", "{bundle}", "--key", "{key}", "--version", "1.2,3"), 2, "argument --version"),
    "sign --min-runtime typo": Row(
        ("sign", "{bundle}", "--key", "{key}", "--version", "1", "--min-runtime", "O.1"), 2, "argument --min-runtime"
    ),
    "sign a missing model": Row(("sign", "{tmp}/nope.tflite", "--key", "{key}", "--version", "1"), 1, "no such file"),
    "sign a folder without bundle.json": Row(("sign", "{tmp}", "--key", "{key}", "--version", "1"), 1, "bundle.json"),
    "sign misspelt option": Row(("sign", "{bundle}", "--kye", "{key}", "--version", "1"), 2, "required: --key"),
    "verify without --trusted": Row(("verify", "{bundle}"), 2, "required: --trusted"),
    "verify --trusted missing": Row(("verify", "{bundle}", "--trusted", "{tmp}/nope.pub"), 2, "--trusted: no such"),
    "verify --trusted private": Row(("verify", "{bundle}", "--trusted", "{key}"), 2, "this is a private key"),
    "verify --installed typo": Row(("verify", "{bundle}", "--trusted", "{pub}", "--installed", "x"), 2, "--installed"),
    "verify a downgrade": Row(("verify", "{bundle}", "--trusted", "{pub}", "--installed", "2"), 1, "downgrade refused"),
    "verify a missing model": Row(("verify", "{tmp}/nope.tflite", "--trusted", "{pub}"), 1, "no such file"),
    "verify an unsigned model": Row(("verify", str(MOTIONS), "--trusted", "{pub}"), 1, "unsigned"),
}


def test_cli_mistakes_give_one_line(cli: Cli, tmp_path: Path, bundle: Path) -> None:
    """Each mistake: exactly one ``edge-runtime: error:`` line, no traceback, the right status."""
    key, pub = mf.create_keypair(tmp_path / "keys")
    mf.sign(bundle, key, "1.0")
    names = {"tmp": str(tmp_path), "key": str(key), "pub": str(pub), "keydir": str(key.parent), "bundle": str(bundle)}

    def run(row: Row) -> subprocess.CompletedProcess[str]:
        return cli(*(a.format(**names) for a in row.args))

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = dict(zip(CLI_ROWS, pool.map(run, CLI_ROWS.values())))
    for name, row in CLI_ROWS.items():
        got = results[name]
        lines = got.stderr.splitlines()
        assert got.returncode == row.status, f"{name}: status {got.returncode}\n{got.stderr}"
        assert len(lines) == 1 and lines[0].startswith("edge-runtime: error: "), f"{name}:\n{got.stderr}"
        assert row.phrase.format(**names) in lines[0], f"{name}: {lines[0]}"
        assert "Traceback" not in got.stderr
