#!/usr/bin/env bash
# Install the edge-runtime daemon as a systemd service: on Raspberry Pi OS 64-bit, on Jetson (JetPack 6),
# or on another Linux with systemd. Running it again upgrades the package and keeps the config.
# Undo with scripts/deploy/uninstall.sh. Guides: firmware_notes/deploy_raspberry_pi.md, deploy_jetson.md.
set -euo pipefail
umask 022  # the venv and the files must be readable by the service's user, whatever root's umask is

# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<EOF
usage: sudo $PROG [--target pi|jetson|auto] [--root DIR] [--source PATH|SPEC] [--extras LIST]
                  [--pip-args ARGS] [--venv-args ARGS] [--no-start] [--dry-run] [--help]

Installs edge-runtime as a systemd service, one line per step:
  the system user $SERVICE_USER (no login shell, home $SERVICE_HOME, in group dialout; on Jetson
    also in video and render where those groups exist),
  a virtual environment DIR/opt/edge-runtime/venv with the package (pip install --upgrade),
  DIR/etc/systemd/system/$SERVICE.service (scripts/deploy/edge-runtime.service, ExecStart = the venv),
  DIR/etc/edge-runtime/edge-runtime.toml, only if there is none (never overwritten): the shipped
    example with state_dir /var/lib/edge-runtime, jsonl sinks in /var/log/edge-runtime and the
    shipped model and recording from the installed package,
  DIR/etc/udev/rules.d/99-edge-runtime-serial.rules (a commented example; kept if present),
  DIR/etc/logrotate.d/$SERVICE (rotates the jsonl files, then systemctl reload: SIGHUP reopens them),
then checks the config (edge-runtime serve --check), and runs systemctl daemon-reload and
systemctl enable --now $SERVICE (restart instead when it was already running).

options:
  --target pi|jetson|auto  the board (default auto: /etc/nv_tegra_release or a device-tree model
                           naming Jetson/NVIDIA is jetson, "Raspberry Pi" is pi, else generic linux)
  --root DIR               install under DIR instead of / (for tests: every path the files name is
                           under DIR, as the venv's own scripts are; not an image to copy elsewhere).
                           The user tools get --root DIR; systemctl runs only if SYSTEMCTL is set
  --source PATH|SPEC       what to pip-install: a source tree, a wheel, or a requirement such as
                           edge-runtime==0.1.0 (default: the repository this script is in)
  --extras LIST            extras to add, comma-separated: litert, openvino, tflite-runtime
                           (default: none; pip install picks the board's backends by itself)
  --pip-args ARGS          more arguments for pip install (e.g. "--no-deps" in tests)
  --venv-args ARGS         more arguments for python -m venv (e.g. "--system-site-packages" to use
                           Debian's python3-numpy)
  --no-start               do not enable or start the service (daemon-reload still runs)
  --dry-run                say what would be done; change nothing
  -h, --help               this text

environment:
  PYTHON                   the Python (>= 3.10) that makes the venv (default: python3)
  SYSTEMCTL, USERADD, USERMOD, GROUPADD
                           commands to use instead of the real ones (a command line)

Exit status: 0 done, 1 failed (one line says why), 2 usage error.
EOF
}

# --- arguments -------------------------------------------------------------------------------------
TARGET=auto
ROOT_ARG=/
SOURCE=""
EXTRAS=""
PIP_ARGS=""
VENV_ARGS=""
NO_START=0

need_value() { [[ $# -ge 2 && -n $2 ]] || usage_error "$1 needs a value"; }
while [[ $# -gt 0 ]]; do
  arg=$1
  if [[ $arg == --*=* ]]; then  # --opt=value
    set -- "${arg%%=*}" "${arg#*=}" "${@:2}"
    arg=$1
  fi
  case $arg in
    --target) need_value "$@"; TARGET=$2; shift 2 ;;
    --root) need_value "$@"; ROOT_ARG=$2; shift 2 ;;
    --source) need_value "$@"; SOURCE=$2; shift 2 ;;
    --extras) need_value "$@"; EXTRAS=$2; shift 2 ;;
    --pip-args) need_value "$@"; PIP_ARGS=$2; shift 2 ;;
    --venv-args) need_value "$@"; VENV_ARGS=$2; shift 2 ;;
    --no-start) NO_START=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage_error "unknown option: $arg" ;;
  esac
done
case $TARGET in
  pi | jetson | auto) ;;
  *) usage_error "--target must be pi, jetson or auto, got '$TARGET'" ;;
esac
[[ -z $EXTRAS || $EXTRAS =~ ^[A-Za-z0-9_-]+(,[A-Za-z0-9_-]+)*$ ]] \
  || usage_error "--extras must be names separated by commas (e.g. litert,openvino), got '$EXTRAS'"
set_root "$ROOT_ARG"
set_paths
need_root
read -r -a PIP_EXTRA <<<"$PIP_ARGS"
read -r -a VENV_EXTRA <<<"$VENV_ARGS"
PYTHON=${PYTHON:-python3}

# --- the board -------------------------------------------------------------------------------------
board_model() { [[ -r /proc/device-tree/model ]] && tr -d '\0' </proc/device-tree/model || true; }
L4T=""  # the Jetson Linux release, e.g. "R36" (JetPack 6) or "R35" (JetPack 5)
if [[ -r /etc/nv_tegra_release ]]; then
  L4T=$(sed -n 's/^# \(R[0-9]*\) (release).*/\1/p' /etc/nv_tegra_release | head -n 1)
fi
MODEL=$(board_model)
if [[ $TARGET == auto ]]; then
  if [[ -e /etc/nv_tegra_release || $MODEL == *Jetson* || $MODEL == *NVIDIA* ]]; then
    TARGET=jetson
  elif [[ $MODEL == *"Raspberry Pi"* ]]; then
    TARGET=pi
  else
    TARGET=linux
  fi
  say "target: $TARGET (detected: ${MODEL:-no device-tree model}${L4T:+, Jetson Linux $L4T})"
else
  say "target: $TARGET (--target)"
fi

# --- the Python --------------------------------------------------------------------------------------
command -v "$PYTHON" >/dev/null || die "no Python '$PYTHON': set PYTHON=/path/to/python3 (3.10 or newer)"
PROBE='import os, platform, struct, sys
print(sys.version_info[0], sys.version_info[1], sys.version_info[2], platform.machine(),
      struct.calcsize("P") * 8, os.path.realpath(sys.base_prefix))'
read -r PY_MAJOR PY_MINOR PY_MICRO PY_MACHINE PY_BITS PY_BASE < <("$PYTHON" -I -c "$PROBE" 2>/dev/null) \
  || die "$PYTHON does not run as a Python: set PYTHON=/path/to/python3 (3.10 or newer)"
PY_VERSION="$PY_MAJOR.$PY_MINOR"
if ((PY_MAJOR < 3 || (PY_MAJOR == 3 && PY_MINOR < 10))); then
  jp5="" jp6=""
  if [[ $TARGET == jetson ]]; then jp5=" (JetPack 5 ships 3.8)" jp6=", or upgrade to JetPack 6"; fi
  die "Python $PY_VERSION ($PYTHON) is too old: edge-runtime needs 3.10 or newer$jp5; install one outside /home and /root (e.g. UV_PYTHON_INSTALL_DIR=/opt/python uv python install 3.11) and rerun with PYTHON=/path/to/python3.11$jp6"
fi
ROUTE=""
if ((PY_BITS == 32)) && [[ $PY_MACHINE == a* ]]; then  # a 32-bit ARM system: aarch64, armv7l, armv6l, armv8l
  case $PY_MACHINE in
    armv7l)
      ((PY_MINOR <= 11)) || die "32-bit ARM (armv7l) with Python $PY_VERSION: only the tflite-runtime route applies there and tflite-runtime has no wheel past Python 3.11; rerun with PYTHON=/path/to/python3.11, or install the 64-bit OS"
      ROUTE="32-bit ARM (armv7l): the tflite-runtime route: setup.cfg gives tflite-runtime 2.14 with NumPy < 2 (NumPy from piwheels, which Raspberry Pi OS's pip is set up with); LiteRT and OpenVINO publish no 32-bit wheels"
      ;;
    aarch64)
      die "a 32-bit system on a 64-bit kernel (Raspberry Pi 4/5 with 32-bit Raspberry Pi OS): pip's markers see aarch64 and ask for LiteRT and OpenVINO, which have no 32-bit wheels; install the 64-bit OS, or take the tflite-runtime route by hand (firmware_notes/deploy_raspberry_pi.md)"
      ;;
    *)
      die "32-bit ARM ($PY_MACHINE): no TFLite or OpenVINO wheel is published for it; use a 64-bit OS (or an armv7l system with Python 3.11: the tflite-runtime route)"
      ;;
  esac
fi
case $PY_BASE/ in
  /root/* | /home/*)
    why="$PYTHON lives in $PY_BASE, which the service cannot read (the unit has ProtectHome=yes): use a Python installed outside /home and /root"
    if [[ -z $ROOT ]]; then die "$why"; else say "warning: $why"; fi
    ;;
esac
"$PYTHON" -I -c 'import venv, ensurepip' 2>/dev/null \
  || die "$PYTHON cannot make a virtual environment (no venv/ensurepip): sudo apt install python3-venv (or python$PY_VERSION-venv)"
say "python: $PY_MAJOR.$PY_MINOR.$PY_MICRO $PY_MACHINE ($(command -v "$PYTHON"))"
[[ -z $ROUTE ]] || say "$ROUTE"
if [[ $TARGET == jetson ]]; then
  say "jetson: LiteRT and OpenVINO run on the CPU; the GPU needs a TFLite GPU delegate you build (-d litert:delegate=/path/libtensorflowlite_gpu_delegate.so). onnxruntime-gpu is not installed: it is not on PyPI for Jetson (NVIDIA's builds: https://pypi.jetson-ai-lab.io/jp6/cu126) and edge-runtime does not use ONNX Runtime yet"
fi

# --- what to install -----------------------------------------------------------------------------------
TEMP=$(mktemp -d "${TMPDIR:-/tmp}/edge-runtime-install.XXXXXX")  # a staged source tree, pip's and the check's errors
trap 'rm -rf -- "$TEMP"' EXIT
if [[ -z $SOURCE ]]; then
  SOURCE=$(cd "$DEPLOY_DIR/../.." && pwd -P)
  [[ -f $SOURCE/setup.cfg && -d $SOURCE/edge_runtime ]] \
    || die "no edge-runtime source tree around this script ($SOURCE): give --source PATH|WHEEL|SPEC"
fi
EXTRAS_SUFFIX=${EXTRAS:+[$EXTRAS]}
if [[ -d $SOURCE ]]; then
  SOURCE=$(cd "$SOURCE" && pwd -P)
  [[ -f $SOURCE/setup.cfg || -f $SOURCE/pyproject.toml ]] || die "--source $SOURCE: not a Python source tree"
  KIND="source tree"
elif [[ -f $SOURCE ]]; then
  [[ $SOURCE == *.whl || $SOURCE == *.tar.gz ]] || die "--source $SOURCE: expected a wheel (.whl) or an sdist (.tar.gz)"
  SOURCE=$(realpath -- "$SOURCE")
  REQUIREMENT="$SOURCE$EXTRAS_SUFFIX"
  KIND="file"
elif [[ $SOURCE == */* || $SOURCE == *.whl ]]; then
  die "--source $SOURCE: no such file or directory"
elif [[ $SOURCE =~ ^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^]]*\])?(.*)$ ]]; then
  [[ -z ${BASH_REMATCH[2]} || -z $EXTRAS ]] || usage_error "--source $SOURCE already names extras: leave out --extras"
  REQUIREMENT="${BASH_REMATCH[1]}${BASH_REMATCH[2]:-$EXTRAS_SUFFIX}${BASH_REMATCH[3]}"
  KIND="requirement"
else
  usage_error "--source must be a directory, a wheel or a requirement such as edge-runtime==0.1.0, got '$SOURCE'"
fi

if ((DRY_RUN)); then
  say "dry run: nothing is changed"
fi

# --- 1. the service user ----------------------------------------------------------------------------
GROUPS_WANTED=dialout
if [[ $TARGET == jetson ]]; then
  for g in video render; do  # the GPU's device nodes
    if db_has group "$g"; then GROUPS_WANTED+=",$g"; fi
  done
fi
if ! db_has group dialout; then
  userdb groupadd --system dialout
  done_say "group dialout: created (serial ports belong to it on Debian, Ubuntu and Raspberry Pi OS)"
fi
if db_has passwd "$SERVICE_USER"; then
  userdb usermod --append --groups "$GROUPS_WANTED" "$SERVICE_USER"
  done_say "user $SERVICE_USER: exists; in groups $GROUPS_WANTED"
else
  if db_has group "$SERVICE_USER"; then gid=(--gid "$SERVICE_USER"); else gid=(--user-group); fi
  userdb useradd --system "${gid[@]}" --groups "$GROUPS_WANTED" --home-dir "$SERVICE_HOME" --no-create-home \
    --shell /usr/sbin/nologin --comment "edge-runtime daemon" "$SERVICE_USER"
  done_say "user $SERVICE_USER: created (system user, no login shell, home $SERVICE_HOME, groups $GROUPS_WANTED)"
fi

# --- 2. the virtual environment and the package -------------------------------------------------------
if ((DRY_RUN)); then
  say "would run: $PYTHON -m venv ${VENV_ARGS:+$VENV_ARGS }$VENV"
  say "would run: $VENV/bin/python -m pip install --upgrade ${PIP_ARGS:+$PIP_ARGS }${SOURCE}${EXTRAS_SUFFIX} ($KIND)"
else
  venv_version=""
  if [[ -x $VENV/bin/python ]]; then
    venv_version=$("$VENV/bin/python" -I -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || true)
  fi
  if [[ $venv_version == "$PY_VERSION" ]]; then
    say "venv $VENV: kept (Python $venv_version)"
  else
    mkdir -p "$(dirname "$VENV")"
    clear=()
    [[ ! -e $VENV ]] || clear=(--clear)
    "$PYTHON" -m venv "${clear[@]}" "${VENV_EXTRA[@]}" "$VENV" || die "could not make the venv $VENV"
    say "venv $VENV: ${clear[*]:+re}created (Python $PY_VERSION${VENV_ARGS:+, $VENV_ARGS})"
  fi
  if [[ $KIND == "source tree" ]]; then
    # pip builds a source tree in place (build/, *.egg-info): build a copy, so that a checkout run
    # with sudo gets no root-owned files and a tree being edited is not written to.
    STAGE="$TEMP/src"
    mkdir "$STAGE"
    tar -C "$SOURCE" --exclude=.git --exclude='.venv*' --exclude=build --exclude=dist --exclude='*.egg-info' \
      --exclude=__pycache__ --exclude=.mypy_cache --exclude=.pytest_cache --exclude=.ruff_cache \
      --exclude=.hypothesis -cf - . | tar -C "$STAGE" -xf - || die "could not copy $SOURCE to $STAGE"
    REQUIREMENT="$STAGE$EXTRAS_SUFFIX"
  fi
  say "package: pip install --upgrade ${PIP_ARGS:+$PIP_ARGS }${SOURCE}${EXTRAS_SUFFIX} ($KIND)"
  PIP_DISABLE_PIP_VERSION_CHECK=1 "$VENV/bin/python" -m pip install --upgrade --quiet --progress-bar off \
    "${PIP_EXTRA[@]}" "$REQUIREMENT" || die "pip install of $SOURCE$EXTRAS_SUFFIX failed (pip's reason is above)"
  VERSION=$("$VENV/bin/edge-runtime" --version) || die "$VENV/bin/edge-runtime does not run after the install"
  say "package: $VERSION in $VENV"
fi

# --- 3. the unit --------------------------------------------------------------------------------------
grep -qxF "ExecStart=$SHIPPED_EXEC" "$UNIT_TEMPLATE" \
  || die "$UNIT_TEMPLATE: ExecStart is no longer '$SHIPPED_EXEC': make install.sh and the unit agree"
EXEC="$VENV/bin/edge-runtime serve --config $CONFIG"  # the shipped line itself when the root is /
if ((DRY_RUN)); then
  say "would install $UNIT (ExecStart=$EXEC)"
else
  while IFS= read -r line || [[ -n $line ]]; do
    [[ $line != ExecStart=* ]] || line="ExecStart=$EXEC"
    printf '%s\n' "$line"
  done <"$UNIT_TEMPLATE" >"$TEMP/unit"
  put_file "$TEMP/unit" "$UNIT"
  say "unit $UNIT: $PUT_STATE (ExecStart=$EXEC)"
fi

# --- 4. the config: written only when there is none ---------------------------------------------------
# scripts/deploy/write_config.py: the shipped example, with its paths made absolute into the installed
# package's data directory, state in /var/lib/edge-runtime, JSON lines files in /var/log/edge-runtime.
if [[ -e $CONFIG ]]; then
  say "config $CONFIG: kept (an existing config is never overwritten)"
elif ((DRY_RUN)); then
  say "would write $CONFIG from the shipped example (state in /var/lib/edge-runtime, jsonl sinks in /var/log/edge-runtime)"
else
  # -I: the venv's own package, not an edge_runtime/ in the current directory (a checkout's root)
  DATA=$("$VENV/bin/python" -I -c 'import edge_runtime, pathlib; print(pathlib.Path(edge_runtime.__file__).parent / "data")')
  [[ -f $DATA/edge-runtime.example.toml ]] || die "the installed package has no $DATA/edge-runtime.example.toml"
  mkdir -p "$CONFIG_DIR"
  err=$("$VENV/bin/python" -I "$DEPLOY_DIR/write_config.py" "$DATA/edge-runtime.example.toml" "$DATA" \
    "$CONFIG.tmp.$$" "$VERSION" 2>&1) || die "could not write $CONFIG: ${err##*error: }"
  chmod 0644 "$CONFIG.tmp.$$"
  mv -f "$CONFIG.tmp.$$" "$CONFIG"
  say "config $CONFIG: written from the shipped example (models from $DATA)"
fi

# --- 5. the udev example and the logrotate snippet ----------------------------------------------------
if [[ -e $UDEV_RULE ]]; then
  say "udev rule $UDEV_RULE: kept (an existing file is never overwritten)"
elif ((DRY_RUN)); then
  say "would install $UDEV_RULE (a commented example)"
else
  put_file "$UDEV_TEMPLATE" "$UDEV_RULE"
  say "udev rule $UDEV_RULE: installed (a commented example: /dev/serial/by-id/ or your own symlink)"
fi
if ((DRY_RUN)); then
  say "would install $LOGROTATE"
else
  put_file "$LOGROTATE_TEMPLATE" "$LOGROTATE"
  say "logrotate $LOGROTATE: $PUT_STATE (/var/log/edge-runtime/*.jsonl, then systemctl reload: SIGHUP)"
fi

# --- 6. check the config --------------------------------------------------------------------------------
HEALTHZ="127.0.0.1:9464"
if ((DRY_RUN)); then
  say "would run: $VENV/bin/edge-runtime serve --check $CONFIG"
else
  check=$("$VENV/bin/edge-runtime" serve --check "$CONFIG" --json 2>"$TEMP/check.err") \
    || die "config check failed: $(tail -n 1 "$TEMP/check.err")"
  summary=$("$VENV/bin/python" -I -c 'import json, sys
s = json.loads(sys.argv[1])
print(len(s["pipelines"]), s["metrics"] or "-")' "$check") || die "config check printed no summary: $check"
  read -r n_pipelines HEALTHZ <<<"$summary"
  say "config check: ok, $n_pipelines pipeline(s) ($VENV/bin/edge-runtime serve --check $CONFIG)"
fi

# --- 7. systemd -------------------------------------------------------------------------------------------
if can_systemctl; then
  sysctl daemon-reload
  say "systemctl daemon-reload: done"
  if ((NO_START)); then
    say "service: not enabled or started (--no-start); start it with: systemctl enable --now $SERVICE"
  else
    was_active=0
    if ((!DRY_RUN)) && sysctl is-active --quiet "$SERVICE"; then was_active=1; fi
    sysctl enable --now "$SERVICE" || die "systemctl enable --now $SERVICE failed: see journalctl -u $SERVICE"
    if ((was_active)); then
      sysctl restart "$SERVICE" || die "systemctl restart $SERVICE failed: see journalctl -u $SERVICE"
      say "service: enabled, restarted with the new package"
    else
      say "service: enabled and started (systemd waited for READY=1: models loaded and warmed)"
    fi
  fi
else
  say "systemctl: skipped, $SYSTEMCTL_SKIPPED"
fi

if ((DRY_RUN)); then
  say "dry run done: nothing was changed"
  exit 0
fi
say "done. Check it:"
echo "  systemctl status $SERVICE"
echo "  journalctl -u $SERVICE -f"
if [[ $HEALTHZ == - ]]; then
  echo "  (metrics and /healthz are disabled in $CONFIG)"
else
  echo "  curl -s $HEALTHZ/healthz"
fi
