"""scripts/deploy/install.sh and uninstall.sh, run for real in a throwaway root.

The venv is made and the package pip-installed for real (from this repository); only what would
touch this machine itself is replaced, through the scripts' own overrides: the user database
(USERADD, USERMOD, USERDEL, GROUPADD, GROUPDEL) and systemd (SYSTEMCTL) go to a stub that
records its arguments. The root's user database is a plain ``etc/passwd`` and ``etc/group`` that
the test writes, as a real root would have.

To stay fast and offline for the dependencies, the fast test installs with ``--pip-args
--no-deps`` and makes the venv through a ``PYTHON`` wrapper that adds this test environment's
site-packages to the new venv (a ``.pth`` file, after the venv's own, so the venv's freshly
installed edge_runtime is the one imported). pip still builds the package in an isolated build
environment, so setuptools and wheel come from the package index (or pip's cache).
``EDGE_RUNTIME_SLOW=1`` adds the one real full install, every dependency from PyPI.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from conftest import ROOT

DEPLOY = ROOT / "scripts" / "deploy"
INSTALL = DEPLOY / "install.sh"
UNINSTALL = DEPLOY / "uninstall.sh"
SHIPPED_EXEC = "/opt/edge-runtime/venv/bin/edge-runtime serve --config /etc/edge-runtime/edge-runtime.toml"
OVERRIDES = ("SYSTEMCTL", "USERADD", "USERMOD", "USERDEL", "GROUPADD", "GROUPDEL")
USER_LINE = "edge-runtime:x:998:998:edge-runtime daemon:/var/lib/edge-runtime:/usr/sbin/nologin\n"

needs_systemd = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")

STUB = """#!/bin/sh
# Stands in for a command that would change this machine: records its arguments, does nothing.
echo "$*" >> "$STUB_LOG"
"""

#: PYTHON for the fast test: a venv made through it also sees this test environment's packages.
SHARED_PYTHON = """#!/bin/sh
if [ "$1" = "-m" ] && [ "$2" = "venv" ]; then
  "{python}" "$@" || exit $?
  for venv; do :; done
  site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
  echo "{site}" > "$site/_edge_runtime_test_env.pth"
  exit 0
fi
exec "{python}" "$@"
"""


class Scripts:
    """Runs the deploy scripts with every system command stubbed; ``calls()`` lists what the stubs got."""

    def __init__(self, tmp_path: Path, python: str | None = None) -> None:
        self.log = tmp_path / "stub.log"
        stub = tmp_path / "stub"
        stub.write_text(STUB)
        stub.chmod(0o755)
        self.env = {**os.environ, "STUB_LOG": str(self.log)}
        for var in OVERRIDES:
            self.env[var] = f"{stub} {var.lower()}"
        if python is None:
            wrapper = tmp_path / "python"
            wrapper.write_text(SHARED_PYTHON.format(python=sys.executable, site=sysconfig.get_path("purelib")))
            wrapper.chmod(0o755)
            python = str(wrapper)
        self.env["PYTHON"] = python

    def __call__(self, script: Path, *args: str | Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", str(script), *map(str, args)],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout,
            check=False,
        )

    def calls(self) -> list[str]:
        """Every stubbed command run so far, one ``"tool args..."`` string each; then forgets them."""
        lines = self.log.read_text().splitlines() if self.log.exists() else []
        self.log.unlink(missing_ok=True)
        return lines


def ok(out: subprocess.CompletedProcess[str]) -> str:
    assert out.returncode == 0, f"exit {out.returncode}\nstdout:\n{out.stdout}\nstderr:\n{out.stderr}"
    return out.stdout


def fake_root(tmp_path: Path, groups: str = "dialout:x:20:\nvideo:x:44:\n") -> Path:
    """A root whose user database has the groups given and no edge-runtime user."""
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "group").write_text(groups)
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    return root


def test_install_upgrade_uninstall(tmp_path: Path) -> None:
    root = fake_root(tmp_path)
    run = Scripts(tmp_path)
    venv = root / "opt" / "edge-runtime" / "venv"
    unit = root / "etc" / "systemd" / "system" / "edge-runtime.service"
    config = root / "etc" / "edge-runtime" / "edge-runtime.toml"
    udev = root / "etc" / "udev" / "rules.d" / "99-edge-runtime-serial.rules"
    logrotate = root / "etc" / "logrotate.d" / "edge-runtime"
    common = ("--root", root, "--source", ROOT, "--pip-args", "--no-deps")

    # 1. First install, not started.
    out = ok(run(INSTALL, *common, "--target", "pi", "--venv-args", "--prompt edge-test", "--no-start"))
    lines = out.splitlines()
    assert all(line.startswith("install.sh: ") or line.startswith("  ") for line in lines), out
    assert lines[-3:] == [
        "  systemctl status edge-runtime",
        "  journalctl -u edge-runtime -f",
        "  curl -s 127.0.0.1:9464/healthz",
    ]

    version = subprocess.run([venv / "bin" / "edge-runtime", "--version"], capture_output=True, text=True, check=True)
    assert version.stdout.startswith("edge-runtime ")
    assert "prompt = 'edge-test'" in (venv / "pyvenv.cfg").read_text()  # --venv-args reached python -m venv

    exec_line = f"ExecStart={venv}/bin/edge-runtime serve --config {config}"
    shipped = (DEPLOY / "edge-runtime.service").read_text()
    assert unit.read_text() == shipped.replace(f"ExecStart={SHIPPED_EXEC}", exec_line)
    assert (venv / "bin" / "edge-runtime").is_file()
    if shutil.which("systemd-analyze"):
        verify = subprocess.run(["systemd-analyze", "verify", unit], capture_output=True, text=True, timeout=60)
        assert verify.returncode == 0 and verify.stdout + verify.stderr == "", verify.stdout + verify.stderr

    check = subprocess.run(
        [venv / "bin" / "edge-runtime", "serve", "--check", config, "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stderr
    summary = json.loads(check.stdout)
    assert summary["state_dir"] == "/var/lib/edge-runtime"
    [pipeline] = summary["pipelines"]
    site = venv / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
    data = site / "edge_runtime" / "data"
    assert pipeline["model"] == str(data / "basicmotions_int8.tflite") and pipeline["sha256_pinned"]
    assert pipeline["source"].startswith(f"file:{data}/basicmotions_recording.csv")
    assert [s for s in pipeline["sinks"] if s.startswith("jsonl:")] == ["jsonl:/var/log/edge-runtime/imu.jsonl"]

    assert udev.read_text() == (DEPLOY / "99-edge-runtime-serial.rules").read_text()
    assert "/dev/serial/by-id" in udev.read_text() and 'GROUP="dialout", MODE="0660"' in udev.read_text()
    assert logrotate.read_text() == (DEPLOY / "edge-runtime.logrotate").read_text()
    assert "systemctl reload edge-runtime" in logrotate.read_text()
    if shutil.which("logrotate"):  # parses it; rotates nothing (debug mode)
        parsed = subprocess.run(
            ["logrotate", "--debug", "--state", tmp_path / "logrotate.state", logrotate], capture_output=True, text=True
        )
        assert parsed.returncode == 0 and "error" not in parsed.stdout + parsed.stderr, parsed.stderr

    calls = run.calls()
    [useradd] = [c for c in calls if c.startswith("useradd ")]
    assert useradd.startswith(f"useradd --root {root} --system ")
    assert useradd.endswith(" edge-runtime") and " --groups dialout " in useradd  # pi: dialout only
    assert " --home-dir /var/lib/edge-runtime " in useradd and " --shell /usr/sbin/nologin " in useradd
    assert not [c for c in calls if c.startswith("groupadd ")]  # dialout exists in this root
    assert [c for c in calls if c.startswith("systemctl ")] == ["systemctl daemon-reload"]  # --no-start

    # 2. Second run (the user exists now; a Jetson, whose video group exists here): the package is
    #    installed again, the user's own config is left alone, the service enabled and restarted.
    with (root / "etc" / "passwd").open("a") as f:
        f.write(USER_LINE)
    with (root / "etc" / "group").open("a") as f:
        f.write("edge-runtime:x:998:\n")
    config.write_text(config.read_text() + "# the user's own edit\n")
    before = config.read_bytes()
    installed = data.parent / "__init__.py"
    stamp = (installed.stat().st_ino, installed.stat().st_mtime_ns)
    out = ok(run(INSTALL, *common, "--target", "jetson"))
    assert config.read_bytes() == before
    assert f"config {config}: kept" in out and "onnxruntime-gpu is not installed" in out
    assert (installed.stat().st_ino, installed.stat().st_mtime_ns) != stamp  # pip installed it again
    calls = run.calls()
    assert f"usermod --root {root} --append --groups dialout,video edge-runtime" in calls
    assert not [c for c in calls if c.startswith("useradd ")]
    assert "systemctl enable --now edge-runtime" in calls

    # 3. Uninstall: the config, and a udev rule the user edited, stay; so does the user.
    udev.write_text(udev.read_text() + 'SUBSYSTEM=="tty", ATTRS{serial}=="X1", SYMLINK+="edge-imu"\n')
    ok(run(UNINSTALL, "--root", root))
    assert not venv.exists() and not unit.exists() and not logrotate.exists()
    assert config.read_bytes() == before and udev.exists()
    calls = run.calls()
    assert "systemctl disable --now edge-runtime" in calls
    assert not [c for c in calls if c.startswith(("userdel ", "groupdel "))]

    # 4. --purge: the config, the edited rule and the user go too.
    ok(run(UNINSTALL, "--root", root, "--purge"))
    assert not config.parent.exists() and not udev.exists()
    assert f"userdel --root {root} edge-runtime" in run.calls()


@pytest.mark.parametrize(
    ("script", "args", "says"),
    [
        (INSTALL, ["--target", "foo"], "--target must be pi, jetson or auto, got 'foo'"),
        (INSTALL, ["--frobnicate"], "unknown option: --frobnicate"),
        (INSTALL, ["--root"], "--root needs a value"),
        (INSTALL, ["--extras", "litert;rm"], "--extras must be names separated by commas"),
        (UNINSTALL, ["--frobnicate"], "unknown option: --frobnicate"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(tmp_path: Path, script: Path, args: list[str], says: str) -> None:
    out = Scripts(tmp_path)(script, *args)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.count("\n") == 1 and says in out.stderr, out.stderr
    assert not (tmp_path / "stub.log").exists()


@pytest.mark.parametrize("script", [INSTALL, UNINSTALL])
def test_help(tmp_path: Path, script: Path) -> None:
    out = Scripts(tmp_path)(script, "--help")
    assert out.returncode == 0 and out.stdout.startswith("usage: ") and out.stderr == ""


@pytest.mark.parametrize(
    ("probe", "target", "says"),
    [
        ("3 8 10 aarch64 64 /usr", "jetson", "is too old: edge-runtime needs 3.10 or newer (JetPack 5 ships 3.8)"),
        ("3 12 3 armv7l 32 /usr", "pi", "only the tflite-runtime route applies"),
        ("3 11 2 aarch64 32 /usr", "pi", "install the 64-bit OS"),
    ],
)
def test_a_python_that_cannot_work_is_one_line(tmp_path: Path, probe: str, target: str, says: str) -> None:
    """A Python too old (JetPack 5), or a 32-bit ARM system without a route: exit 1 with one line."""
    fake = tmp_path / "PYTHON"
    fake.write_text(f"#!/bin/sh\necho '{probe}'\n")  # answers the installer's probe, as that Python would
    fake.chmod(0o755)
    out = Scripts(tmp_path, python=str(fake))(INSTALL, "--root", tmp_path / "root", "--target", target)
    assert out.returncode == 1 and out.stderr.count("\n") == 1 and says in out.stderr, out.stderr
    assert not (tmp_path / "root").exists() and not (tmp_path / "stub.log").exists()


def test_32_bit_raspberry_pi_os_takes_the_tflite_runtime_route(tmp_path: Path) -> None:
    fake = tmp_path / "PYTHON"
    fake.write_text("#!/bin/sh\necho '3 11 2 armv7l 32 /usr'\n")
    fake.chmod(0o755)
    out = Scripts(tmp_path, python=str(fake))(INSTALL, "--root", tmp_path / "root", "--target", "pi", "--dry-run")
    assert "32-bit ARM (armv7l): the tflite-runtime route" in ok(out)


def test_dry_run_changes_nothing(tmp_path: Path) -> None:
    root = fake_root(tmp_path, groups="")
    out = ok(Scripts(tmp_path)(INSTALL, "--root", root, "--target", "jetson", "--dry-run"))
    assert sorted(p.name for p in root.rglob("*")) == ["etc", "group", "passwd"]
    assert not (tmp_path / "stub.log").exists()
    assert f"would run: {tmp_path / 'stub'} groupadd --root {root} --system dialout" in out
    assert "would run: " in out and out.rstrip().endswith("dry run done: nothing was changed")


@pytest.mark.skipif(
    os.environ.get("EDGE_RUNTIME_SLOW") != "1",
    reason="the full install downloads LiteRT, OpenVINO and NumPy from PyPI: set EDGE_RUNTIME_SLOW=1",
)
def test_full_install_from_pypi(tmp_path: Path) -> None:
    """The route a board takes: a plain venv, every dependency from the package index."""
    root = fake_root(tmp_path)
    run = Scripts(tmp_path, python=sys.executable)
    ok(run(INSTALL, "--root", root, "--source", ROOT, "--target", "pi", "--no-start", timeout=1800))
    venv = root / "opt" / "edge-runtime" / "venv"
    where = subprocess.run(
        [
            venv / "bin" / "python",
            "-I",
            "-c",
            "import edge_runtime, numpy; print(edge_runtime.__file__, numpy.__file__)",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert all(path.startswith(str(venv)) for path in where.stdout.split()), where.stdout  # all in the venv itself
    model = next(venv.rglob("edge_runtime/data/basicmotions_int8.tflite"))
    info = subprocess.run(
        [venv / "bin" / "edge-runtime", "info", model, "--json"], capture_output=True, text=True, timeout=300
    )
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["backend"] in ("litert", "openvino")
