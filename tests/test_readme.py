"""The README's code and commands are the ones that work."""

from __future__ import annotations

import re
import subprocess
import sys

from conftest import ROOT, Cli

README = (ROOT / "README.md").read_text()


def test_python_example_runs() -> None:
    block = re.search(r"## Use it\n\n```python\n(.*?)```", README, re.S)
    assert block, "README has a Python example under 'Use it'"
    proc = subprocess.run([sys.executable, "-c", block.group(1)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "because auto ->" in proc.stdout and "int8[1,8,8,1]" in proc.stdout


def test_quick_start_has_exactly_two_commands_and_ci_runs_the_second() -> None:
    section = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```sh\n(.*?)\n```", section, re.S)
    assert len(commands) == 2 and all("\n" not in c for c in commands), commands
    ci = (ROOT / ".ci" / "run").read_text()
    assert "quickstart-tests" in ci and "<!-- quickstart-tests -->" in section
    assert commands[1].endswith("pytest"), "the test command runs the whole suite"


def test_documented_verbs_exist(cli: Cli) -> None:
    documented = re.findall(r"^\| `edge-runtime (\w+)", README, re.M)
    assert documented, "README has a table of verbs"
    listed = cli("--help").stdout
    for verb in documented:
        assert verb in listed, verb
        proc = cli(verb, "--help", timeout=60)
        assert proc.returncode == 0, (verb, proc.stderr)
