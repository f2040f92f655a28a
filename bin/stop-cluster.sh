#!/usr/bin/env bash
# Stops the cluster started by start-cluster.sh: the JobManager, then every
# TaskManager.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=weir-cluster-common.sh
. "$(dirname "$0")/weir-cluster-common.sh"

usage() {
  cat <<USAGE
Usage: $WEIR_SCRIPT [--kill]

Stops the cluster of \$WEIR_LOG_DIR. The JobManager first: SIGTERM makes it
cancel the job cleanly (what the last completed checkpoint committed stays;
uncommitted output and temporary files go) and exit, and its TaskManagers
then exit by themselves; any TaskManager still running after a few seconds
gets SIGTERM. A process still running \$WEIR_STOP_TIMEOUT seconds (default 30)
after SIGTERM gets SIGKILL. Pid files are removed; logs and cluster.cmd stay.
(Stopping the TaskManagers first, as Flink's stop-cluster.sh does, would make
the JobManager fail the job over and wait for slots.)

  --kill       SIGKILL every process at once (no clean cancel)
  -h, --help   this help

Environment: WEIR_LOG_DIR (default ./log), WEIR_STOP_TIMEOUT.
USAGE
}

sig=TERM
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
    *) weir_die "unknown argument '$1' (see --help)" ;;
  esac
done
if [ ! -f "$WEIR_CMD_FILE" ] && [ ! -f "$WEIR_JM_PID" ] && [ -z "$(weir_tm_indexes)" ]; then
  weir_die "no cluster recorded in $(weir_show "$WEIR_LOG_DIR"): nothing to stop (WEIR_LOG_DIR points at a cluster's log directory)"
fi

stopped=0
jm=$(weir_read_pid "$WEIR_JM_PID")
if weir_alive "$jm" jobmanager; then
  weir_stop_process "$jm" JobManager "$sig"
  stopped=$((stopped + 1))
elif [ -n "$jm" ]; then
  echo "JobManager (pid $jm) was not running"
fi
rm -f "$WEIR_JM_PID"

mapfile -t indexes < <(weir_tm_indexes)
if [ "$sig" = TERM ] && [ ${#indexes[@]} -gt 0 ]; then
  # They exit by themselves once told the job ended.
  deadline=$((SECONDS + 5))
  while [ "$SECONDS" -lt "$deadline" ]; do
    alive=0
    for k in "${indexes[@]}"; do
      weir_alive "$(weir_read_pid "$(weir_tm_pidfile "$k")")" taskmanager && alive=1
    done
    [ "$alive" -eq 1 ] || break
    sleep 0.2
  done
fi
for k in "${indexes[@]}"; do
  pidfile=$(weir_tm_pidfile "$k")
  pid=$(weir_read_pid "$pidfile")
  if weir_alive "$pid" taskmanager; then
    weir_stop_process "$pid" "TaskManager $k" "$sig"
    stopped=$((stopped + 1))
  elif [ -n "$pid" ]; then
    echo "TaskManager $k (pid $pid) ended"
  fi
  rm -f "$pidfile"
done
echo "cluster of $(weir_show "$WEIR_LOG_DIR") stopped ($stopped process(es) signalled)"
