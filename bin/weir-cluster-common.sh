# shellcheck shell=bash
# Shared by bin/start-cluster.sh, bin/stop-cluster.sh, bin/start-taskmanager.sh
# and bin/stop-taskmanager.sh (sourced, not run). The state of a cluster lives
# in one directory, $WEIR_LOG_DIR (default ./log, relative to the directory
# the scripts are run from):
#   cluster.cmd                 the job program's command line and working
#                               directory (a bash fragment written by
#                               start-cluster.sh, read by the others)
#   weir-jobmanager.log/.pid    the JobManager's stdout+stderr and process id
#   weir-taskmanager-<k>.log/.pid  TaskManager k (0, 1, ... in start order)
# Environment: WEIR_LOG_DIR, WEIR_START_TIMEOUT (seconds start-cluster.sh
# waits for the web UI line, default 60), WEIR_STOP_TIMEOUT (seconds a stop
# waits after SIGTERM before SIGKILL, default 30). These three are not passed
# on to the job's processes (they are no configuration options, and the
# program rejects unknown WEIR_* variables); every other WEIR_* variable is,
# as configuration.

WEIR_SCRIPT=$(basename "$0")
WEIR_LOG_DIR=${WEIR_LOG_DIR:-log}
case $WEIR_LOG_DIR in
  /*) ;;
  *) WEIR_LOG_DIR=$PWD/$WEIR_LOG_DIR ;;
esac
WEIR_CMD_FILE=$WEIR_LOG_DIR/cluster.cmd
WEIR_JM_LOG=$WEIR_LOG_DIR/weir-jobmanager.log
WEIR_JM_PID=$WEIR_LOG_DIR/weir-jobmanager.pid
WEIR_START_TIMEOUT=${WEIR_START_TIMEOUT:-60}
WEIR_STOP_TIMEOUT=${WEIR_STOP_TIMEOUT:-30}

weir_die() {
  echo "$WEIR_SCRIPT: $*" >&2
  exit 1
}

weir_is_number() {
  [[ $1 =~ ^[0-9]+$ ]]
}

# Paths as the user typed them, relative to the current directory when they
# are inside it.
weir_show() {
  local p=$1
  case $p in
    "$PWD"/*) echo "${p#"$PWD"/}" ;;
    *) echo "$p" ;;
  esac
}

# Records the job program's command line ("$@"), the current directory, the
# slots per TaskManager ($2, may be empty) and where the JobManager runs ($1:
# local, started by start-cluster.sh from this log directory, or remote).
weir_record_cmd() {
  local jobmanager=$1 slots=$2
  shift 2
  mkdir -p "$WEIR_LOG_DIR"
  {
    echo "# the command line of the weir cluster started from this log directory"
    echo "# (written by $WEIR_SCRIPT on $(date '+%Y-%m-%d %H:%M:%S'); read by bin/*-cluster.sh and bin/*-taskmanager.sh)"
    printf 'WEIR_CLUSTER_CWD=%q\n' "$PWD"
    printf 'WEIR_CLUSTER_JOBMANAGER=%q\n' "$jobmanager"
    printf 'WEIR_CLUSTER_SLOTS=%q\n' "$slots"
    printf 'WEIR_CLUSTER_CMD=('
    printf ' %q' "$@"
    printf ' )\n'
  } >"$WEIR_CMD_FILE"
}

# Loads the recorded command line (WEIR_CLUSTER_CWD, WEIR_CLUSTER_SLOTS,
# WEIR_CLUSTER_CMD) and checks that its program exists.
weir_load_cmd() {
  if [ ! -f "$WEIR_CMD_FILE" ]; then
    weir_die "no cluster recorded in $(weir_show "$WEIR_LOG_DIR") (no cluster.cmd): start one with bin/start-cluster.sh, or point WEIR_LOG_DIR at its log directory"
  fi
  WEIR_CLUSTER_CWD=
  # shellcheck disable=SC2034 # read by start-taskmanager.sh
  WEIR_CLUSTER_JOBMANAGER=
  WEIR_CLUSTER_SLOTS=
  WEIR_CLUSTER_CMD=()
  # shellcheck source=/dev/null
  . "$WEIR_CMD_FILE"
  if [ ${#WEIR_CLUSTER_CMD[@]} -eq 0 ] || [ -z "$WEIR_CLUSTER_CWD" ]; then
    weir_die "$(weir_show "$WEIR_CMD_FILE") records no command line"
  fi
  weir_check_program "${WEIR_CLUSTER_CMD[0]}" "$WEIR_CLUSTER_CWD"
}

# Checks that the program $1 (run from directory $2) exists and can run.
weir_check_program() {
  local prog=$1 cwd=$2 path
  case $prog in
    /*) path=$prog ;;
    */*) path=$cwd/$prog ;;
    *)
      command -v "$prog" >/dev/null 2>&1 ||
        weir_die "the job program '$prog' is not on PATH"
      return 0
      ;;
  esac
  if [ ! -e "$path" ]; then
    weir_die "the job program $prog does not exist (from $cwd); build it first, e.g. cargo build --release --all-features --examples"
  fi
  if ! { [ -x "$path" ] && [ -f "$path" ]; }; then weir_die "the job program $prog is not an executable file"; fi
}

# The pid in pid file $1 (empty when there is none).
weir_read_pid() {
  local pid=
  if [ -f "$1" ]; then read -r pid <"$1" || true; fi
  if weir_is_number "${pid:-x}"; then echo "$pid"; fi
}

# True when process $1 runs and is a weir process of role $2 (jobmanager or
# taskmanager): a pid file can outlive its process and the pid be reused.
weir_alive() {
  local pid=$1 role=$2 state cmdline
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  if [ -r "/proc/$pid/stat" ]; then
    # Field 3 of /proc/PID/stat is the state; Z: exited, not yet reaped.
    state=$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1) || return 1
    [ "$state" != Z ] || return 1
    cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
    [[ $cmdline == *"--$role"* ]] || return 1
  fi
  return 0
}

# Starts "${WEIR_CLUSTER_CMD[@]}" plus "$@" from WEIR_CLUSTER_CWD in a new
# session (setsid: the terminal's Ctrl-C and hang-up do not reach it), output
# to log file $1, pid to pid file $2; prints the pid.
weir_launch() {
  local log=$1 pidfile=$2
  shift 2
  [ -f "$log" ] && mv -f "$log" "$log.1"
  local setsid=()
  command -v setsid >/dev/null 2>&1 && setsid=(setsid)
  (
    # Log files, not terminals: no ANSI colors in the tracing lines.
    export NO_COLOR=${NO_COLOR:-1}
    # The scripts' own variables are no configuration options: the program
    # rejects unknown WEIR_* variables.
    unset WEIR_LOG_DIR WEIR_START_TIMEOUT WEIR_STOP_TIMEOUT
    cd "$WEIR_CLUSTER_CWD" &&
      exec "${setsid[@]}" nohup "${WEIR_CLUSTER_CMD[@]}" "$@" >"$log" 2>&1 </dev/null
  ) >/dev/null &
  local pid=$!
  echo "$pid" >"$pidfile"
  echo "$pid"
}

weir_start_jobmanager() {
  weir_launch "$WEIR_JM_LOG" "$WEIR_JM_PID" --jobmanager
}

weir_tm_log() { echo "$WEIR_LOG_DIR/weir-taskmanager-$1.log"; }
weir_tm_pidfile() { echo "$WEIR_LOG_DIR/weir-taskmanager-$1.pid"; }

# The indexes of the TaskManagers with a pid file, ascending.
weir_tm_indexes() {
  local f k
  for f in "$WEIR_LOG_DIR"/weir-taskmanager-*.pid; do
    [ -e "$f" ] || continue
    k=${f##*/weir-taskmanager-}
    k=${k%.pid}
    weir_is_number "$k" && echo "$k"
  done | sort -n
}

# The index the next TaskManager gets: one more than any index with a log
# or pid file, so no log is overwritten.
weir_next_tm_index() {
  local f k next=0
  for f in "$WEIR_LOG_DIR"/weir-taskmanager-*.log "$WEIR_LOG_DIR"/weir-taskmanager-*.pid; do
    [ -e "$f" ] || continue
    k=${f##*/weir-taskmanager-}
    k=${k%.*}
    weir_is_number "$k" && [ "$k" -ge "$next" ] && next=$((k + 1))
  done
  echo "$next"
}

# Starts TaskManager $1 with the recorded command line; prints its pid.
weir_start_taskmanager() {
  local k=$1
  local extra=(--taskmanager)
  [ -n "$WEIR_CLUSTER_SLOTS" ] && extra+=(-D "taskmanager.numberOfTaskSlots=$WEIR_CLUSTER_SLOTS")
  weir_launch "$(weir_tm_log "$k")" "$(weir_tm_pidfile "$k")" "${extra[@]}"
}

# Waits up to $2 seconds for process $1 to end; true when it has.
weir_wait_gone() {
  local pid=$1 deadline=$((SECONDS + $2))
  while kill -0 "$pid" 2>/dev/null; do
    # A zombie (exited, its parent has not reaped it) counts as gone.
    if [ -r "/proc/$pid/stat" ] && [ "$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1)" = Z ]; then
      return 0
    fi
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 0.2
  done
  return 0
}

# Stops process $1 (described as $2) with signal $3 (TERM or KILL): waits
# WEIR_STOP_TIMEOUT seconds after SIGTERM, then sends SIGKILL.
weir_stop_process() {
  local pid=$1 what=$2 sig=$3
  echo "stopping $what (pid $pid) with SIG$sig"
  kill -s "$sig" "$pid" 2>/dev/null || true
  if [ "$sig" = KILL ]; then
    weir_wait_gone "$pid" 10 || weir_die "$what (pid $pid) did not end after SIGKILL"
    return 0
  fi
  if ! weir_wait_gone "$pid" "$WEIR_STOP_TIMEOUT"; then
    echo "$what (pid $pid) still runs ${WEIR_STOP_TIMEOUT}s after SIGTERM: sending SIGKILL" >&2
    kill -s KILL "$pid" 2>/dev/null || true
    weir_wait_gone "$pid" 10 || weir_die "$what (pid $pid) did not end after SIGKILL"
  fi
}

# Prints the last lines of log file $1 to stderr, indented.
weir_tail() {
  local log=$1
  [ -f "$log" ] || return 0
  echo "--- last lines of $(weir_show "$log"):" >&2
  tail -n "${2:-20}" "$log" | sed 's/^/    /' >&2
}
