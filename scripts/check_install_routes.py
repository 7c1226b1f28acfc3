#!/usr/bin/env python3
"""Check that every install route README.md's "Install on a board" promises resolves on PyPI.

For each board and Python version it resolves what ``pip install .`` would install there,
wheels only and without installing anything, and prints one row per route: the version pip
chose for each dependency, ``-`` where setup.cfg does not ask for it on that board, or
``no wheel``. It exits 1 when a route the README promises does not resolve.

How: setup.cfg's ``install_requires`` markers are evaluated here for the target board
(``pip install --platform`` evaluates markers against the interpreter running pip, so it
would pick x86_64's backends for every board), then pip resolves the resulting list for the
target's wheel tags:

    pip --isolated install --dry-run --ignore-installed --report R.json --target TMP
        --only-binary=:all: --implementation cp --python-version 3.11 --abi cp311 --abi abi3
        --abi none --platform manylinux_2_36_aarch64 ... --platform manylinux2014_aarch64 REQS

``--isolated`` leaves this machine's pip configuration out (a local mirror or wheel folder),
so the answer is PyPI's. Markers inside the dependencies' own metadata are still evaluated
by pip for the interpreter running it (pip has no way to change that).

The 32-bit Raspberry Pi OS routes add piwheels, the extra index Pi OS's /etc/pip.conf sets
(NumPy publishes no armv7l wheel on PyPI). Where piwheels cannot be reached, a route whose
only missing wheels are the ones piwheels provides is reported as ``unchecked`` (exit 0;
``--strict`` makes it a failure).

Needs the network, so it is a script and never part of the test suite: 60-70 s for the 13
routes on a 2-core x86_64 machine with pip 23.2 (2026-11-29; pip's resolver is the cost, about
6 s a route, four routes at a time).

    python scripts/check_install_routes.py            # the table; exit 1 if a promised route fails
    python scripts/check_install_routes.py -v         # also every package pip chose, per route
    python scripts/check_install_routes.py --strict   # unchecked (piwheels unreachable) fails too
"""

from __future__ import annotations

import argparse
import configparser
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    from packaging.markers import default_environment
    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet
    from packaging.utils import canonicalize_name
except ImportError:  # pip always carries a copy
    from pip._vendor.packaging.markers import default_environment  # type: ignore
    from pip._vendor.packaging.requirements import Requirement  # type: ignore
    from pip._vendor.packaging.specifiers import SpecifierSet  # type: ignore
    from pip._vendor.packaging.utils import canonicalize_name  # type: ignore

ROOT = Path(__file__).resolve().parents[1]
PIWHEELS = "https://www.piwheels.org/simple"
#: The columns of the table, in order: the project's direct dependencies.
COLUMNS = ("numpy", "pyserial", "ai-edge-litert", "openvino", "tflite-runtime")
BACKENDS = ("ai-edge-litert", "openvino", "tflite-runtime")
PIP_TIMEOUT_S = 300


@dataclass(frozen=True)
class Route:
    """One board and Python version that README.md's install table speaks for."""

    board: str
    python: str  # "3.11"
    machine: str  # platform_machine as the board reports it (what the markers see)
    glibc: tuple[int, int]  # the newest manylinux_2_X the board's C library accepts
    arch: str = ""  # the wheels' architecture when it differs from machine (32-bit userland, 64-bit kernel)
    promised: bool = True  # README says this route installs; False: shown for information
    extra_index: str | None = None  # an index the board's own pip configuration adds
    from_extra_index: frozenset[str] = frozenset()  # packages only that index has wheels of here
    requirements: tuple[str, ...] = ()  # a documented command's explicit list instead of setup.cfg's
    command: str = "pip install ."

    @property
    def wheel_arch(self) -> str:
        return self.arch or self.machine

    def platform_tags(self) -> list[str]:
        """Every platform tag a wheel may carry to install here, newest first."""
        arch = self.wheel_arch
        tags = [f"manylinux_{self.glibc[0]}_{minor}_{arch}" for minor in range(self.glibc[1], 16, -1)]
        tags.append(f"manylinux2014_{arch}")
        if arch in ("x86_64", "i686"):
            tags += [f"manylinux2010_{arch}", f"manylinux1_{arch}"]
        tags.append(f"linux_{arch}")  # piwheels' armv7l wheels carry this tag
        return tags

    def marker_environment(self) -> dict[str, str]:
        env = {key: str(value) for key, value in default_environment().items()}
        env.update(
            {
                "implementation_name": "cpython",
                "implementation_version": f"{self.python}.0",
                "os_name": "posix",
                "platform_machine": self.machine,
                "platform_python_implementation": "CPython",
                "platform_system": "Linux",
                "python_full_version": f"{self.python}.0",
                "python_version": self.python,
                "sys_platform": "linux",
            }
        )
        return env


PI32 = "Raspberry Pi OS bookworm 32-bit"
PI32_MANUAL = ("pyserial>=3.5", "tflite-runtime>=2.14", "numpy<2")
ROUTES: tuple[Route, ...] = (
    *(Route("x86_64 Linux (glibc 2.28+)", py, "x86_64", (2, 28)) for py in ("3.10", "3.11", "3.12", "3.13")),
    Route("Jetson, JetPack 6 (glibc 2.35)", "3.10", "aarch64", (2, 35)),
    Route("Jetson, JetPack 5 (glibc 2.31)", "3.8", "aarch64", (2, 31), promised=False),
    Route("Jetson, JetPack 5 + a Python 3.11 (pyenv)", "3.11", "aarch64", (2, 31)),
    Route("Raspberry Pi OS bookworm 64-bit", "3.11", "aarch64", (2, 36)),
    Route("Raspberry Pi OS trixie 64-bit", "3.13", "aarch64", (2, 41)),
    Route(
        f"{PI32} (armv7l)",
        "3.11",
        "armv7l",
        (2, 36),
        extra_index=PIWHEELS,
        from_extra_index=frozenset({"numpy"}),
    ),
    Route(
        f"{PI32}, Pi 4/5 kernel (aarch64)",
        "3.11",
        "aarch64",
        (2, 36),
        arch="armv7l",
        promised=False,
        extra_index=PIWHEELS,
        from_extra_index=frozenset({"numpy"}),
    ),
    Route(
        f"{PI32}, Pi 4/5 kernel (aarch64)",
        "3.11",
        "aarch64",
        (2, 36),
        arch="armv7l",
        extra_index=PIWHEELS,
        from_extra_index=frozenset({"numpy"}),
        requirements=PI32_MANUAL,
        command="pip install --no-deps . + " + " ".join(PI32_MANUAL),
    ),
    Route(
        "Raspberry Pi OS trixie 32-bit (armv7l)",
        "3.13",
        "armv7l",
        (2, 41),
        promised=False,
        extra_index=PIWHEELS,
        from_extra_index=frozenset({"numpy"}),
    ),
)


@dataclass
class Outcome:
    route: Route
    status: str = "ok"  # ok, FAIL, unchecked, wrong python; ", no backend" appended where none is installed
    cells: dict[str, str] = field(default_factory=dict)  # column -> version, "-", "no wheel", ...
    chosen: list[str] = field(default_factory=list)  # every name==version pip chose
    error: str = ""
    notes: list[str] = field(default_factory=list)


def project_requirements(setup_cfg: Path) -> tuple[SpecifierSet, list[Requirement]]:
    """setup.cfg's python_requires and install_requires."""
    cfg = configparser.ConfigParser()
    cfg.read_string(setup_cfg.read_text())
    lines = cfg.get("options", "install_requires").splitlines()
    reqs = [Requirement(line.strip()) for line in lines if line.strip() and not line.strip().startswith("#")]
    return SpecifierSet(cfg.get("options", "python_requires")), reqs


def requirements_for(route: Route, reqs: Sequence[Requirement]) -> list[str]:
    """The requirement strings that apply on the route's board, without their markers."""
    if route.requirements:
        return list(route.requirements)
    env = route.marker_environment()
    out = []
    for req in reqs:
        if req.marker is None or req.marker.evaluate(env):
            extras = f"[{','.join(sorted(req.extras))}]" if req.extras else ""
            out.append(f"{req.name}{extras}{req.specifier}")
    return out


def reachable(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/pip/", timeout=10) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def pip_resolve(
    route: Route, reqs: Sequence[str], *, no_deps: bool = False, isolated: bool = True, extra_index: str | None = None
) -> tuple[dict[str, dict[str, Any]], str]:
    """Ask pip what it would install on the route's board: ({name: report entry}, error text)."""
    py = route.python.replace(".", "")
    with tempfile.TemporaryDirectory(prefix="edge_runtime_routes_") as tmp:
        report = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "pip"]
        if isolated:
            cmd.append("--isolated")
        cmd += [
            "install",
            "--dry-run",
            "--ignore-installed",
            "--quiet",
            "--disable-pip-version-check",
            "--report",
            str(report),
            "--target",
            str(Path(tmp) / "target"),
            "--only-binary=:all:",
            "--implementation",
            "cp",
            "--python-version",
            route.python,
            "--abi",
            f"cp{py}",
            "--abi",
            "abi3",
            "--abi",
            "none",
        ]
        for tag in route.platform_tags():
            cmd += ["--platform", tag]
        if extra_index:
            cmd += ["--extra-index-url", extra_index]
        if no_deps:
            cmd.append("--no-deps")
        cmd += list(reqs)
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
        if proc.returncode != 0:
            lines = [line for line in proc.stderr.splitlines() if line.strip()]
            errors = [line for line in lines if line.startswith("ERROR")]
            return {}, errors[-1] if errors else (lines[-1] if lines else f"pip exited {proc.returncode}")
        data = json.loads(report.read_text())
    installs: dict[str, dict[str, Any]] = {
        str(canonicalize_name(item["metadata"]["name"])): item for item in data["install"]
    }
    return installs, ""


def check(
    route: Route,
    python_requires: SpecifierSet,
    reqs: Sequence[Requirement],
    reachable_indexes: set[str],
    isolated: bool,
) -> Outcome:
    out = Outcome(route)
    if not route.requirements and route.python not in python_requires:
        out.status = "wrong python"
        out.error = f"Python {route.python} not in python_requires {python_requires}"
        return out
    wanted = requirements_for(route, reqs)
    wanted_names = {canonicalize_name(Requirement(r).name) for r in wanted}
    extra = route.extra_index if route.extra_index in reachable_indexes else None
    installs, error = pip_resolve(route, wanted, isolated=isolated, extra_index=extra)
    for column in COLUMNS:
        name = canonicalize_name(column)
        if name not in wanted_names:
            out.cells[column] = "-"
        elif name in installs:
            out.cells[column] = str(installs[name]["metadata"]["version"])
    if not error:
        out.chosen = sorted(f"{item['metadata']['name']}=={item['metadata']['version']}" for item in installs.values())
        return _mark_no_backend(out)
    # Not resolvable as a whole: find which requirement (or a dependency of one) has no wheel.
    out.error = error
    missing, versions = _missing_wheels(route, wanted, isolated, extra)
    for column in COLUMNS:
        name = canonicalize_name(column)
        if name in wanted_names:
            out.cells[column] = "no wheel" if name in missing else versions.get(name, "?")
    for dep in sorted(missing - {str(canonicalize_name(c)) for c in COLUMNS}):
        out.notes.append(f"dependency {dep}: no wheel")
    unchecked = {str(canonicalize_name(n)) for n in route.from_extra_index} if extra is None else set()
    for column in COLUMNS:
        if canonicalize_name(column) in missing & unchecked:
            out.cells[column] = "piwheels?"
    out.status = "unchecked" if missing and missing <= unchecked else "FAIL"
    if out.status == "FAIL" and missing - unchecked:
        out.error = f"no wheel for {', '.join(sorted(missing - unchecked))}"
    return _mark_no_backend(out)


def _mark_no_backend(out: Outcome) -> Outcome:
    if all(out.cells.get(column) == "-" for column in BACKENDS):
        out.status += ", no backend"
    return out


def _missing_wheels(
    route: Route, wanted: Sequence[str], isolated: bool, extra: str | None
) -> tuple[set[str], dict[str, str]]:
    """(names with no wheel for the route, {name: version} of the others), following the
    dependencies with one --no-deps probe per name (each name's first requirement only)."""
    env = route.marker_environment()
    pending = list(reversed(wanted))
    seen: set[str] = set()
    missing: set[str] = set()
    versions: dict[str, str] = {}
    while pending:
        text = pending.pop()
        name = str(canonicalize_name(Requirement(text).name))
        if name in seen:
            continue
        seen.add(name)
        installs, error = pip_resolve(route, [text], no_deps=True, isolated=isolated, extra_index=extra)
        if error or name not in installs:
            missing.add(name)
            continue
        versions[name] = str(installs[name]["metadata"]["version"])
        for dep in installs[name]["metadata"].get("requires_dist") or []:
            req = Requirement(str(dep))
            if req.marker is None or req.marker.evaluate({**env, "extra": ""}):
                pending.append(str(req).split(";")[0])
    return missing, versions


def table(outcomes: Sequence[Outcome]) -> str:
    header = ["board", "python", "command", "resolves", *COLUMNS]
    rows = []
    for o in outcomes:
        status = o.status if o.route.promised else f"{o.status} (not promised)"
        rows.append([o.route.board, o.route.python, o.route.command, status, *(o.cells.get(c, "") for c in COLUMNS)])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(header, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="list every package pip chose per route")
    parser.add_argument("--strict", action="store_true", help="a route left unchecked (index unreachable) fails")
    parser.add_argument(
        "--use-pip-config",
        action="store_true",
        help="keep this machine's pip configuration (a proxy, a mirror) instead of PyPI alone",
    )
    parser.add_argument("--jobs", type=int, default=4, help="routes resolved at once (default 4)")
    parser.add_argument(
        "--setup-cfg", type=Path, default=ROOT / "setup.cfg", help="the setup.cfg to check (default: this repository's)"
    )
    args = parser.parse_args(argv)

    pip = _pip_version()
    if tuple(int(p) for p in pip.split(".")[:2] if p.isdigit()) < (22, 2):
        print(f"pip {pip} has no --dry-run --report: python -m pip install -U pip", file=sys.stderr)
        return 2
    t0 = time.monotonic()
    python_requires, reqs = project_requirements(args.setup_cfg)
    reachable_indexes = {url for url in {r.extra_index for r in ROUTES if r.extra_index} if url and reachable(url)}
    isolated = not args.use_pip_config
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        outcomes = list(pool.map(lambda r: check(r, python_requires, reqs, reachable_indexes, isolated), ROUTES))
    elapsed = time.monotonic() - t0

    print(table(outcomes))
    print(
        "\n- = not asked for on that board (setup.cfg's markers); no wheel = asked for, but PyPI has no wheel;\n"
        "piwheels? = no wheel on PyPI, and piwheels (Pi OS's extra index, which builds them) is not reachable here"
    )
    for o in outcomes:
        label = f"{o.route.board}, Python {o.route.python}, {o.route.command}"
        if o.status.startswith(("FAIL", "wrong python")):
            print(f"{label}: {o.error}")
        for note in o.notes:
            print(f"{label}: {note}")
        if args.verbose and o.chosen:
            print(f"{label}: {' '.join(o.chosen)}")
    # A promised route fails when it does not resolve, or resolves to no backend at all.
    failed = [
        o
        for o in outcomes
        if o.route.promised and (o.status.startswith(("FAIL", "wrong python")) or "no backend" in o.status)
    ]
    unchecked = [o for o in outcomes if o.route.promised and o.status.startswith("unchecked")]
    print(
        f"\n{len(outcomes)} routes in {elapsed:.1f} s (pip {pip}, "
        f"{'PyPI only' if not args.use_pip_config else 'this machine pip configuration'}): "
        f"{len(failed)} promised route(s) fail, {len(unchecked)} unchecked"
    )
    for url in sorted({r.extra_index for r in ROUTES if r.extra_index} - reachable_indexes):
        print(f"{url} is not reachable from here: the routes that use it were resolved against PyPI alone")
    return 1 if failed or (args.strict and unchecked) else 0


def _pip_version() -> str:
    proc = subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True, text=True)
    return proc.stdout.split()[1] if proc.returncode == 0 and proc.stdout else "?"


if __name__ == "__main__":
    sys.exit(main())
