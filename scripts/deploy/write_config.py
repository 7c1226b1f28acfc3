"""Write the daemon's first config from the example shipped in the package (run by install.sh).

    python write_config.py EXAMPLE DATA_DIR OUT VERSION

The example's keys and comments are kept; what the example makes relative to itself is made
absolute, so the config works from /etc/edge-runtime: ``model``, ``preprocess`` (a sidecar file)
and ``file:`` sources point into DATA_DIR (the installed package's ``edge_runtime/data``);
``state_dir`` is /var/lib/edge-runtime and each ``jsonl:`` sink goes to /var/log/edge-runtime (the
unit's StateDirectory= and LogsDirectory=, which the service may write). Exits 1 with one line when
the example no longer has a key this relies on. Standard library only: runs on any Python >= 3.10.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

STATE_DIR = "/var/lib/edge-runtime"
LOG_DIR = "/var/log/edge-runtime"
#: A key = "value" line (not commented out) of one of the keys rewritten here.
_KEY = re.compile(r'^(\s*)(state_dir|model|preprocess|source)(\s*=\s*)"([^"]*)"\s*$')
_SINKS = re.compile(r"^\s*sinks\s*=")
_JSONL = re.compile(r'"jsonl:([^"]*)"')


def rewrite(example: str, data_dir: str, version: str, example_path: str) -> str:
    """The config text: a header saying where it came from, then the example with its paths rewritten."""

    def absolute(value: str) -> str:
        return value if value.startswith("/") else f"{data_dir}/{value}"

    seen: set[str] = set()
    out = [
        f"# Written by scripts/deploy/install.sh from the example shipped with {version},",
        f"#   {example_path}",
        "# (every key is explained below). As written, it replays the shipped IMU recording through",
        "# the shipped model. For your sensor: source = a /dev/serial/by-id/...",
        "# path (see /etc/udev/rules.d/99-edge-runtime-serial.rules), model = your model; then",
        "#   edge-runtime serve --check THIS_FILE && systemctl restart edge-runtime",
        "# install.sh never overwrites this file; uninstall.sh removes it only with --purge.",
        "",
    ]
    for line in example.splitlines():
        if m := _KEY.match(line):
            indent, key, eq, value = m.groups()
            if key == "state_dir":
                value = STATE_DIR
            elif key == "source" and value.startswith("file:"):
                value = "file:" + absolute(value[len("file:") :])
            elif key in ("model", "preprocess") and value not in ("auto", "none"):
                value = absolute(value)
            line = f'{indent}{key}{eq}"{value}"'
            seen.add(key)
        elif _SINKS.match(line):
            line = _JSONL.sub(lambda j: f'"jsonl:{LOG_DIR}/{j.group(1).rsplit("/", 1)[-1]}"', line)
            seen.add("sinks")
        out.append(line)
    missing = {"state_dir", "model", "source", "sinks"} - seen
    if missing:
        raise ValueError(
            f"the shipped example has no {', '.join(sorted(missing))} line any more: update write_config.py"
        )
    return "\n".join(out) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print("usage: write_config.py EXAMPLE DATA_DIR OUT VERSION", file=sys.stderr)
        return 2
    example, data_dir, out, version = argv
    try:
        text = rewrite(Path(example).read_text(encoding="utf-8"), data_dir, version, example)
    except (OSError, ValueError) as exc:
        print(f"write_config.py: error: {exc}", file=sys.stderr)
        return 1
    Path(out).write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
