#!/usr/bin/env bash
# Remove what scripts/deploy/install.sh installed. The config, the state, the results and the service
# user stay unless --purge.
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<EOF
usage: sudo $PROG [--root DIR] [--purge] [--dry-run] [--help]

Stops and disables the $SERVICE service, then removes its unit, the venv DIR/opt/edge-runtime/venv,
the logrotate snippet and the udev rule example (an edited udev rule is kept unless --purge).
Kept unless --purge: the config DIR/etc/edge-runtime/, the state, cache and results in
/var/lib/edge-runtime, /var/cache/edge-runtime and /var/log/edge-runtime, and the user $SERVICE_USER.

options:
  --root DIR   the root install.sh was given (default /); systemctl runs only if SYSTEMCTL is set
  --purge      also remove the config, the state, the results and the user
  --dry-run    say what would be done; change nothing
  -h, --help   this text

environment: SYSTEMCTL, USERDEL, GROUPDEL: commands to use instead of the real ones.
Exit status: 0 done, 1 failed, 2 usage error.
EOF
}

ROOT_ARG=/
PURGE=0
need_value() { [[ $# -ge 2 && -n $2 ]] || usage_error "$1 needs a value"; }
while [[ $# -gt 0 ]]; do
  arg=$1
  if [[ $arg == --*=* ]]; then
    set -- "${arg%%=*}" "${arg#*=}" "${@:2}"
    arg=$1
  fi
  case $arg in
    --root) need_value "$@"; ROOT_ARG=$2; shift 2 ;;
    --purge) PURGE=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage_error "unknown option: $arg" ;;
  esac
done
set_root "$ROOT_ARG"
set_paths
need_root
[[ -z $ROOT || -d $ROOT ]] || die "--root $ROOT: no such directory"

# remove PATH WHAT: rm -rf, or say it would.
remove() {
  if [[ ! -e $1 && ! -L $1 ]]; then
    say "$2 $1: not there"
  elif ((DRY_RUN)); then
    say "would remove $2 $1"
  else
    rm -rf -- "$1"
    say "$2 $1: removed"
  fi
}

# 1. stop and disable the service
if can_systemctl; then
  if sysctl disable --now "$SERVICE"; then
    say "service: stopped and disabled"
  else
    say "service: systemctl disable --now $SERVICE failed (not installed, or already gone): going on"
  fi
else
  say "systemctl: skipped, $SYSTEMCTL_SKIPPED"
fi

# 2. what install.sh owns
remove "$UNIT" unit
if can_systemctl && sysctl daemon-reload; then say "systemctl daemon-reload: done"; fi
remove "$VENV" venv
if [[ -d $ROOT/opt/edge-runtime ]] && ((!DRY_RUN)); then rmdir --ignore-fail-on-non-empty "$ROOT/opt/edge-runtime"; fi
remove "$LOGROTATE" logrotate
if [[ -f $UDEV_RULE ]] && ((!PURGE)) && ! cmp -s "$UDEV_RULE" "$UDEV_TEMPLATE"; then
  say "udev rule $UDEV_RULE: kept, it was edited (--purge removes it)"
else
  remove "$UDEV_RULE" "udev rule"
fi

# 3. what the user made: only with --purge
if ((!PURGE)); then
  kept=()
  for path in "$CONFIG_DIR" "${DATA_DIRS[@]}"; do [[ ! -e $path ]] || kept+=("$path"); done
  if db_has passwd "$SERVICE_USER"; then kept+=("the user $SERVICE_USER"); fi
  if ((${#kept[@]})); then
    printf -v joined '%s, ' "${kept[@]}"
    say "kept: ${joined%, } (--purge removes them)"
  fi
  exit 0
fi
remove "$CONFIG_DIR" config
for dir in "${DATA_DIRS[@]}"; do remove "$dir" data; done
if db_has passwd "$SERVICE_USER"; then
  userdb userdel "$SERVICE_USER"
  done_say "user $SERVICE_USER: removed"
else
  say "user $SERVICE_USER: not there"
fi
# userdel removes the user's own group where login.defs says USERGROUPS_ENAB yes; otherwise:
if db_has group "$SERVICE_USER" && ((!DRY_RUN)); then
  userdb groupdel "$SERVICE_USER"
  done_say "group $SERVICE_USER: removed"
fi
