# shellcheck shell=bash disable=SC2034  # (the variables here are used by the scripts that source it)
# Shared by install.sh and uninstall.sh (sourced, never run): the paths of an installation, one-line
# output, and the only commands that touch the system itself (the user database and systemd).
#
# Each of those commands can be replaced by an environment variable holding a command line (split
# on blanks), for a throwaway root in tests or for an image build:
#   SYSTEMCTL  (default: systemctl)   USERADD, USERMOD, USERDEL, GROUPADD, GROUPDEL (default: the tool)
# With --root DIR other than /, the user tools get `--root DIR` (shadow-utils' own option), and
# systemctl is run only when SYSTEMCTL is set (a root that is not / has no running systemd).

PROG=$(basename "$0")
DEPLOY_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)

readonly SERVICE=edge-runtime
readonly SERVICE_USER=edge-runtime
readonly SERVICE_HOME=/var/lib/edge-runtime
readonly UNIT_TEMPLATE="$DEPLOY_DIR/edge-runtime.service"
readonly UDEV_TEMPLATE="$DEPLOY_DIR/99-edge-runtime-serial.rules"
readonly LOGROTATE_TEMPLATE="$DEPLOY_DIR/edge-runtime.logrotate"
# The unit's ExecStart, as shipped: install.sh checks the unit still says this, so the two cannot drift.
readonly SHIPPED_EXEC="/opt/edge-runtime/venv/bin/edge-runtime serve --config /etc/edge-runtime/edge-runtime.toml"

ROOT=""      # "" for /, else an absolute path without a trailing slash
DRY_RUN=0

say() { printf '%s: %s\n' "$PROG" "$*"; }
# done_say TEXT: say what was done (silent with --dry-run, where the command was printed instead).
done_say() { if ((!DRY_RUN)); then say "$@"; fi; }
die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }
usage_error() { printf '%s: error: %s (see --help)\n' "$PROG" "$*" >&2; exit 2; }

# set_root DIR: where everything goes. "/" is the running system.
set_root() {
  local dir=$1
  [[ -n $dir ]] || usage_error "--root needs a directory"
  [[ $dir != *[[:space:]]* ]] || usage_error "--root must not contain blanks (systemd's ExecStart would split it): '$dir'"
  dir=$(realpath -m -- "$dir")
  ROOT=${dir%/}
}

# The paths of an installation under $ROOT (call after set_root).
set_paths() {
  VENV="$ROOT/opt/edge-runtime/venv"
  UNIT="$ROOT/etc/systemd/system/$SERVICE.service"
  CONFIG_DIR="$ROOT/etc/edge-runtime"
  CONFIG="$CONFIG_DIR/edge-runtime.toml"
  UDEV_RULE="$ROOT/etc/udev/rules.d/99-edge-runtime-serial.rules"
  LOGROTATE="$ROOT/etc/logrotate.d/$SERVICE"
  # The unit's StateDirectory=, CacheDirectory= and LogsDirectory= (systemd creates them at start).
  DATA_DIRS=("$ROOT/var/lib/edge-runtime" "$ROOT/var/cache/edge-runtime" "$ROOT/var/log/edge-runtime")
}

# run_override VAR DEFAULT ARGS...: run $VAR (a command line) if set, else DEFAULT, with ARGS.
run_override() {
  local var=$1 default=$2
  shift 2
  local -a cmd
  read -r -a cmd <<<"${!var:-$default}"
  "${cmd[@]}" "$@"
}

# db_has passwd|group NAME: whether the root's user database has NAME.
db_has() {
  if [[ -z $ROOT ]]; then
    getent "$1" "$2" >/dev/null
  else
    [[ -f $ROOT/etc/$1 ]] && grep -q "^$2:" "$ROOT/etc/$1"
  fi
}

# userdb TOOL ARGS...: useradd, usermod, userdel, groupadd or groupdel on the root's user database.
userdb() {
  local tool=$1
  local var=${tool^^}
  shift
  local -a root_args=()
  [[ -z $ROOT ]] || root_args=(--root "$ROOT")
  if ((DRY_RUN)); then
    say "would run: ${!var:-$tool} ${root_args[*]}${root_args[*]:+ }$*"
    return 0
  fi
  run_override "$var" "$tool" "${root_args[@]}" "$@"
}

# Whether systemctl calls are made, and if not, why (in SYSTEMCTL_SKIPPED).
can_systemctl() {
  SYSTEMCTL_SKIPPED=""
  if [[ -n ${SYSTEMCTL:-} ]]; then
    return 0
  elif [[ -n $ROOT ]]; then
    SYSTEMCTL_SKIPPED="--root is not / (set SYSTEMCTL to a command to run them)"
  elif [[ ! -d /run/systemd/system ]]; then
    SYSTEMCTL_SKIPPED="this system was not booted with systemd"
  fi
  [[ -z $SYSTEMCTL_SKIPPED ]]
}

# sysctl ARGS...: systemctl ARGS (through SYSTEMCTL when set); printed, not run, with --dry-run.
sysctl() {
  if ((DRY_RUN)); then
    say "would run: ${SYSTEMCTL:-systemctl} $*"
    return 0
  fi
  run_override SYSTEMCTL systemctl "$@"
}

# put_file SRC DEST: install SRC as DEST (mode 0644) and say whether it was new, changed or the same.
put_file() {
  local state=installed
  if [[ -f $2 ]]; then
    if cmp -s "$1" "$2"; then state=unchanged; else state=updated; fi
  fi
  install -D -m 0644 "$1" "$2"
  PUT_STATE=$state
}

# need_root: the running system is changed only by root.
need_root() {
  if [[ -z $ROOT ]] && ((!DRY_RUN)) && ((EUID != 0)); then
    die "run it as root (sudo $0 ...): it creates a system user and writes to /opt and /etc"
  fi
}
