#!/usr/bin/env bash
# Starts one more TaskManager of the cluster recorded by start-cluster.sh.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=weir-cluster-common.sh
. "$(dirname "$0")/weir-cluster-common.sh"

usage() {
  cat <<USAGE
Usage: $WEIR_SCRIPT [-s SLOTS] [-- PROGRAM [ARGS...]]

Starts one more TaskManager in the background: the command line recorded by
start-cluster.sh in \$WEIR_LOG_DIR/cluster.cmd plus --taskmanager, from the
directory start-cluster.sh ran in. It gets the next free index k (log
weir-taskmanager-<k>.log, pid file weir-taskmanager-<k>.pid), registers with
the JobManager, and its slots are used when the job needs them (a replacement
for a lost TaskManager, or a spare).

  -s SLOTS     its slots (default: what start-cluster.sh -s recorded, else the
               configuration's taskmanager.numberOfTaskSlots)
  -- PROGRAM [ARGS...]
               the job's command line, when this log directory records none
               (a TaskManager on another machine: add -D
               jobmanager.rpc.address=JOBMANAGER-HOST -D taskmanager.host=THIS-HOST);
               it is recorded for the next start-taskmanager.sh
  -h, --help   this help

Environment: WEIR_LOG_DIR (default ./log).
USAGE
}

slots=
while [ $# -gt 0 ]; do
  case $1 in
    -h | --help)
      usage
      exit 0
      ;;
    -s)
      if ! { [ $# -ge 2 ] && weir_is_number "$2" && [ "$2" -ge 1 ]; }; then weir_die "-s needs a number of slots, at least 1 (see --help)"; fi
      slots=$2
      shift 2
      ;;
    --)
      shift
      [ $# -gt 0 ] || weir_die "no job program after -- (see --help)"
      break
      ;;
    *) weir_die "unknown argument '$1' (see --help)" ;;
  esac
done

if [ $# -gt 0 ]; then
  [ ! -f "$WEIR_CMD_FILE" ] ||
    weir_die "$(weir_show "$WEIR_CMD_FILE") already records the cluster's command line: start without -- PROGRAM, or use another WEIR_LOG_DIR"
  weir_check_program "$1" "$PWD"
  weir_record_cmd remote "$slots" "$@"
fi
weir_load_cmd
# shellcheck disable=SC2034 # read by weir_start_taskmanager
[ -n "$slots" ] && WEIR_CLUSTER_SLOTS=$slots

# A JobManager started from this log directory must still run (else the
# TaskManager would only wait heartbeat.timeout for it and exit).
if [ "$WEIR_CLUSTER_JOBMANAGER" = local ]; then
  jm=$(weir_read_pid "$WEIR_JM_PID")
  weir_alive "$jm" jobmanager ||
    weir_die "the JobManager of this cluster (pid ${jm:-?}, $(weir_show "$WEIR_JM_PID")) is not running: its job ended or it was stopped (see $(weir_show "$WEIR_JM_LOG")); start a new cluster with bin/start-cluster.sh"
fi

k=$(weir_next_tm_index)
pid=$(weir_start_taskmanager "$k")
log=$(weir_tm_log "$k")
# Fail fast when it cannot even start (bad arguments, a port in use).
for _ in 1 2 3 4 5 6 7 8 9 10; do
  weir_alive "$pid" taskmanager || break
  grep -q '^TaskManager ' "$log" 2>/dev/null && break
  sleep 0.2
done
if ! weir_alive "$pid" taskmanager; then
  rm -f "$(weir_tm_pidfile "$k")"
  echo "$WEIR_SCRIPT: TaskManager $k (pid $pid) exited at once" >&2
  weir_tail "$log"
  exit 1
fi
echo "TaskManager $k pid $pid, log $(weir_show "$log")"
