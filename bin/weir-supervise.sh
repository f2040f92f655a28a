#!/usr/bin/env bash
# Runs a job's process and starts it again whenever it exits non-zero: the
# single-machine supervisor for users without systemd (with systemd, see
# deploy/systemd/weir-wordcount.service). With high-availability.type:
# storage the restarted process resumes the same job from its latest
# complete checkpoint by itself.
set -u

WEIR_SCRIPT=$(basename "$0")

usage() {
  cat <<USAGE
Usage: $WEIR_SCRIPT [-d SECONDS] -- PROGRAM [ARGS...]

Runs PROGRAM ARGS... and restarts it, after SECONDS (default 1), each time
it exits non-zero (a crash, a kill, a failed job). Stops when it exits 0 (the
job finished, e.g. after \`weir stop\`) and exits 0, or when it exits 75:
with high availability that is a JobManager fenced because a newer one took
its job over (systemd's RestartPreventExitStatus=75); exits 75 then.

SIGTERM, SIGINT or SIGHUP to this script is forwarded to PROGRAM as SIGTERM
(a weir job cancels cleanly on it; a second one makes it exit at once); the
script then waits for PROGRAM to exit, does not restart it, and exits with
its status. Every start and exit is logged to stderr with the pid.

  -d, --delay SECONDS   pause before a restart (default 1; 0: none)
  -h, --help            this help

Example:
  $WEIR_SCRIPT -- target/release/examples/wordcount --words 0 --rate 100000 \\
      -D high-availability.type=storage -D execution.checkpointing.dir=/var/lib/weir/checkpoints
USAGE
}

say() {
  echo "$WEIR_SCRIPT: $*" >&2
}

delay=1
while [ $# -gt 0 ]; do
  case $1 in
    -h | --help)
      usage
      exit 0
      ;;
    -d | --delay)
      [ $# -ge 2 ] || { say "$1 needs a number of seconds (see --help)"; exit 2; }
      delay=$2
      shift 2
      ;;
    --)
      shift
      break
      ;;
    *)
      say "unknown argument '$1': the program goes after -- (see --help)"
      exit 2
      ;;
  esac
done
case $delay in
  '' | *[!0-9.]*)
    say "--delay '$delay' is not a number of seconds"
    exit 2
    ;;
esac
if [ $# -eq 0 ]; then
  say "no program to run (see --help)"
  exit 2
fi

# weir_runtime::ha::EXIT_FENCED
fenced=75
child=
stopping=
interrupted=
on_signal() {
  interrupted=1
  if [ -z "$stopping" ]; then
    say "received SIG$1: stopping ${child:+pid $child }(no restart)"
  fi
  stopping=$1
  if [ -n "$child" ]; then
    kill -s TERM "$child" 2>/dev/null || true
  fi
}
trap 'on_signal TERM' TERM
trap 'on_signal INT' INT
trap 'on_signal HUP' HUP

starts=0
while :; do
  "$@" &
  child=$!
  starts=$((starts + 1))
  say "started $1 (pid $child, start $starts)"
  # A signal that came before $child was set.
  if [ -n "$stopping" ]; then
    kill -s TERM "$child" 2>/dev/null || true
  fi
  while :; do
    interrupted=
    wait "$child"
    status=$?
    # A trapped signal ends `wait` early (status > 128) while the child
    # still runs: wait again for its own status.
    if [ -n "$interrupted" ] && [ "$status" -gt 128 ]; then
      continue
    fi
    break
  done
  if [ -n "$stopping" ]; then
    say "$1 (pid $child) exited with status $status after SIG$stopping"
    exit "$status"
  fi
  if [ "$status" -eq 0 ]; then
    say "$1 (pid $child) exited with status 0: done"
    exit 0
  fi
  if [ "$status" -eq "$fenced" ]; then
    say "$1 (pid $child) exited with status $fenced: fenced, a newer JobManager runs its job; not restarting"
    exit "$fenced"
  fi
  if [ "$status" -gt 128 ]; then
    say "$1 (pid $child) was killed by signal $((status - 128)) (status $status); restarting in ${delay}s"
  else
    say "$1 (pid $child) exited with status $status; restarting in ${delay}s"
  fi
  child=
  # In the background, so that a signal during the pause is acted on at once.
  sleep "$delay" &
  sleeper=$!
  wait "$sleeper" 2>/dev/null
  if [ -n "$stopping" ]; then
    kill "$sleeper" 2>/dev/null || true
    say "stopped before restarting"
    exit "$status"
  fi
done
