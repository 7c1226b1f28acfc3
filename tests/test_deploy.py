"""The systemd unit: `systemd-analyze verify` passes on it, with its hardening in place."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

UNIT = ROOT / "scripts" / "deploy" / "edge-runtime.service"
INSTALLED = "/opt/edge-runtime/venv/bin/edge-runtime"
needs_systemd = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")


def verify(text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """``systemd-analyze verify`` on ``text``, with ExecStart pointing at this Python's edge_runtime
    (the installed path does not exist here). Unknown keys only warn: the caller checks the output."""
    unit = tmp_path / "edge-runtime.service"
    unit.write_text(text.replace(INSTALLED, f"{sys.executable} -m edge_runtime"))
    return subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)


@needs_systemd
def test_the_unit_verifies_cleanly(tmp_path: Path) -> None:
    text = UNIT.read_text()
    assert INSTALLED in text
    out = verify(text, tmp_path)
    assert out.returncode == 0 and out.stdout + out.stderr == "", out.stdout + out.stderr


@needs_systemd
def test_the_check_catches_a_misspelt_key(tmp_path: Path) -> None:
    out = verify(UNIT.read_text().replace("NoNewPrivileges=yes", "NoNewPrivilege=yes"), tmp_path)
    assert "Unknown key 'NoNewPrivilege'" in out.stdout + out.stderr


def test_the_unit_is_hardened_and_notifies() -> None:
    keys = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            keys[key.strip()] = value.strip()
    assert keys["Type"] == "notify" and keys["NotifyAccess"] == "main" and int(keys["WatchdogSec"]) > 0
    assert keys["NoNewPrivileges"] == "yes" and keys["ProtectSystem"] == "strict" and keys["ProtectHome"] == "yes"
    assert keys["SupplementaryGroups"] == "dialout" and keys["User"] == "edge-runtime"
    assert {keys["StateDirectory"], keys["CacheDirectory"], keys["LogsDirectory"]} == {"edge-runtime"}
    assert keys["Restart"] == "on-failure" and int(keys["StartLimitBurst"]) > 0
    assert keys["ExecReload"] == "/bin/kill -HUP $MAINPID"
    # Below the default of other services (100): a saturated daemon must not starve sshd.
    assert 1 <= int(keys["CPUWeight"]) < 100
