#!/usr/bin/env bash
# Starts a weir cluster on this machine: one JobManager and N TaskManagers,
# each a background process running the job program with the same arguments
# plus --jobmanager or --taskmanager (see the README's "Cluster mode").
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=weir-cluster-common.sh
. "$(dirname "$0")/weir-cluster-common.sh"

usage() {
  cat <<USAGE
Usage: $WEIR_SCRIPT [-n TASKMANAGERS] [-s SLOTS] [-t SECONDS] -- PROGRAM [ARGS...]

Starts the job PROGRAM ARGS... as a cluster: a JobManager (PROGRAM ARGS...
--jobmanager) and TASKMANAGERS TaskManagers (PROGRAM ARGS... --taskmanager
-D taskmanager.numberOfTaskSlots=SLOTS), in the background, from the current
directory. Records the command line in \$WEIR_LOG_DIR/cluster.cmd for
start-taskmanager.sh, writes each process's output to
\$WEIR_LOG_DIR/weir-jobmanager.log and weir-taskmanager-<k>.log and its pid to
a .pid file beside it, waits until the JobManager prints its web UI line
(all TaskManagers registered, the job deployed), then prints the web UI URL
and the pids.

  -n TASKMANAGERS  TaskManagers to start (default 1; 0 starts the JobManager
                   only, for TaskManagers started elsewhere, and does not wait)
  -s SLOTS         slots per TaskManager (default: taskmanager.numberOfTaskSlots
                   of the configuration or of ARGS, 1 unless set); a job of
                   parallelism p needs p slots in all
  -t SECONDS       how long to wait for the web UI line (default
                   \$WEIR_START_TIMEOUT or 60); on timeout the processes keep
                   running (stop them with stop-cluster.sh)
  -h, --help       this help

Environment: WEIR_LOG_DIR (default ./log), WEIR_START_TIMEOUT,
WEIR_STOP_TIMEOUT (see stop-cluster.sh).

Example:
  $WEIR_SCRIPT -n 2 -- target/release/examples/wordcount --words 0 --rate 1000000 \\
      --output out -p 2 -D execution.checkpointing.interval=1s
USAGE
}

taskmanagers=1
slots=
timeout=$WEIR_START_TIMEOUT
while [ $# -gt 0 ]; do
  case $1 in
    -h | --help)
      usage
      exit 0
      ;;
    -n)
      if ! { [ $# -ge 2 ] && weir_is_number "$2"; }; then weir_die "-n needs a number of TaskManagers (see --help)"; fi
      taskmanagers=$2
      shift 2
      ;;
    -s)
      if ! { [ $# -ge 2 ] && weir_is_number "$2" && [ "$2" -ge 1 ]; }; then weir_die "-s needs a number of slots, at least 1 (see --help)"; fi
      slots=$2
      shift 2
      ;;
    -t)
      if ! { [ $# -ge 2 ] && weir_is_number "$2"; }; then weir_die "-t needs a number of seconds (see --help)"; fi
      timeout=$2
      shift 2
      ;;
    --)
      shift
      break
      ;;
    *) weir_die "unknown option '$1': the job's command line goes after -- (see --help)" ;;
  esac
done
[ $# -gt 0 ] || weir_die "no job program: $WEIR_SCRIPT [-n TASKMANAGERS] [-s SLOTS] -- PROGRAM [ARGS...] (see --help)"
for a in "$@"; do
  case $a in
    --jobmanager | --taskmanager) weir_die "the job's command line must not have $a: the scripts add --jobmanager and --taskmanager" ;;
  esac
done
weir_check_program "$1" "$PWD"

# One cluster per log directory.
mkdir -p "$WEIR_LOG_DIR"
running=()
pid=$(weir_read_pid "$WEIR_JM_PID")
weir_alive "$pid" jobmanager && running+=("JobManager pid $pid")
for k in $(weir_tm_indexes); do
  pid=$(weir_read_pid "$(weir_tm_pidfile "$k")")
  weir_alive "$pid" taskmanager && running+=("TaskManager $k pid $pid")
done
if [ ${#running[@]} -gt 0 ]; then
  list=$(printf '%s, ' "${running[@]}")
  weir_die "a cluster of $(weir_show "$WEIR_LOG_DIR") still runs (${list%, }): stop it with bin/stop-cluster.sh, or use another WEIR_LOG_DIR"
fi
# A fresh start: the previous cluster's logs become *.log.1, its pid files go.
rm -f "$WEIR_JM_PID" "$WEIR_LOG_DIR"/weir-taskmanager-*.pid
for f in "$WEIR_LOG_DIR"/weir-taskmanager-*.log; do
  [ -e "$f" ] && mv -f "$f" "$f.1"
done

weir_record_cmd local "$slots" "$@"
weir_load_cmd
jm=$(weir_start_jobmanager)
echo "JobManager   pid $jm, log $(weir_show "$WEIR_JM_LOG")"
for ((k = 0; k < taskmanagers; k++)); do
  tm=$(weir_start_taskmanager "$k")
  echo "TaskManager $k pid $tm, log $(weir_show "$(weir_tm_log "$k")")"
done
if [ "$taskmanagers" -eq 0 ]; then
  echo "no TaskManager started: the JobManager deploys the job once TaskManagers with enough slots registered (bin/start-taskmanager.sh, or the program with --taskmanager on other machines)"
  exit 0
fi

deadline=$((SECONDS + timeout))
while :; do
  ui=$(grep -m1 '^web UI: ' "$WEIR_JM_LOG" 2>/dev/null || true)
  if [ -n "$ui" ]; then
    echo "$ui"
    exit 0
  fi
  if ! weir_alive "$jm" jobmanager; then
    echo "$WEIR_SCRIPT: the JobManager (pid $jm) exited before it printed its web UI line" >&2
    weir_tail "$WEIR_JM_LOG"
    for ((k = 0; k < taskmanagers; k++)); do weir_tail "$(weir_tm_log "$k")" 5; done
    echo "stop the TaskManagers with bin/stop-cluster.sh" >&2
    exit 1
  fi
  if [ "$SECONDS" -ge "$deadline" ]; then
    echo "$WEIR_SCRIPT: no web UI line from the JobManager within ${timeout}s (too few slots for the job's parallelism? -n and -s); the processes keep running" >&2
    weir_tail "$WEIR_JM_LOG"
    for ((k = 0; k < taskmanagers; k++)); do
      pid=$(weir_read_pid "$(weir_tm_pidfile "$k")")
      weir_alive "$pid" taskmanager || echo "TaskManager $k (pid $pid) is not running" >&2
      weir_tail "$(weir_tm_log "$k")" 5
    done
    echo "stop them with bin/stop-cluster.sh" >&2
    exit 1
  fi
  sleep 0.2
done
