#!/usr/bin/env bash
# Stops one TaskManager of the cluster started by start-cluster.sh.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=weir-cluster-common.sh
. "$(dirname "$0")/weir-cluster-common.sh"

usage() {
  cat <<USAGE
Usage: $WEIR_SCRIPT [--kill] [--index K | --pid PID]

Stops one TaskManager of the cluster of \$WEIR_LOG_DIR: by default the most
recently started one that still runs (as Flink's stop-taskmanager.sh). The
JobManager sees it lost at once (its connection breaks) and restarts the job
from the latest completed checkpoint on the slots left, waiting up to
slot.request.timeout for enough of them (bin/start-taskmanager.sh adds one).

  --kill       SIGKILL (a crash) instead of SIGTERM (on SIGTERM the
               TaskManager stops its subtasks and ends its session; the job
               fails over the same way)
  --index K    TaskManager K (its log is weir-taskmanager-K.log)
  --pid PID    the TaskManager with process id PID
  -h, --help   this help

After SIGTERM it waits \$WEIR_STOP_TIMEOUT seconds (default 30) for the
process to end, then sends SIGKILL. Environment: WEIR_LOG_DIR (default ./log).
USAGE
}

sig=TERM
index=
want_pid=
while [ $# -gt 0 ]; do
  case $1 in
    -h | --help)
      usage
      exit 0
      ;;
    --kill)
      sig=KILL
      shift
      ;;
    --index)
      if ! { [ $# -ge 2 ] && weir_is_number "$2"; }; then weir_die "--index needs a TaskManager index (see --help)"; fi
      index=$2
      shift 2
      ;;
    --pid)
      if ! { [ $# -ge 2 ] && weir_is_number "$2"; }; then weir_die "--pid needs a process id (see --help)"; fi
      want_pid=$2
      shift 2
      ;;
    *) weir_die "unknown argument '$1' (see --help)" ;;
  esac
done
[ -z "$index" ] || [ -z "$want_pid" ] || weir_die "--index and --pid exclude each other"
[ -d "$WEIR_LOG_DIR" ] || weir_die "no cluster recorded in $(weir_show "$WEIR_LOG_DIR"): start one with bin/start-cluster.sh, or point WEIR_LOG_DIR at its log directory"

mapfile -t indexes < <(weir_tm_indexes)
target=
if [ -n "$index" ]; then
  [ -f "$(weir_tm_pidfile "$index")" ] ||
    weir_die "no TaskManager $index in $(weir_show "$WEIR_LOG_DIR") (TaskManagers with a pid file: ${indexes[*]:-none})"
  target=$index
elif [ -n "$want_pid" ]; then
  for k in "${indexes[@]}"; do
    [ "$(weir_read_pid "$(weir_tm_pidfile "$k")")" = "$want_pid" ] && target=$k
  done
  [ -n "$target" ] ||
    weir_die "pid $want_pid is not a TaskManager of the cluster of $(weir_show "$WEIR_LOG_DIR") (TaskManagers with a pid file: ${indexes[*]:-none})"
else
  # The most recently started one that runs; pid files of ended ones go.
  for ((i = ${#indexes[@]} - 1; i >= 0; i--)); do
    k=${indexes[i]}
    if weir_alive "$(weir_read_pid "$(weir_tm_pidfile "$k")")" taskmanager; then
      target=$k
      break
    fi
    rm -f "$(weir_tm_pidfile "$k")"
  done
  [ -n "$target" ] || weir_die "no TaskManager of the cluster of $(weir_show "$WEIR_LOG_DIR") is running"
fi

pidfile=$(weir_tm_pidfile "$target")
pid=$(weir_read_pid "$pidfile")
if ! weir_alive "$pid" taskmanager; then
  rm -f "$pidfile"
  weir_die "TaskManager $target (pid ${pid:-?}) is not running (its job ended, or it was stopped or lost; see $(weir_show "$(weir_tm_log "$target")")); removed its pid file"
fi
weir_stop_process "$pid" "TaskManager $target" "$sig"
rm -f "$pidfile"
echo "TaskManager $target stopped"
