#!/bin/sh
# Start / restart containerd without systemd (hosts whose PID 1 is not systemd and that are not
# a chroot). The process ARCH starts is tracked by its pidfile only; a containerd that ARCH did
# not start is never signalled.
#   containerd-direct.sh start|restart|status PIDFILE LOGFILE CONFIG SOCKET BINARY TIMEOUT
# The last line of stdout is "changed" or "unchanged" (for Ansible's changed_when).
set -u
action=$1 pidfile=$2 logfile=$3 config=$4 socket=$5 binary=$6 timeout=$7
ctr_bin=$(dirname "$binary")/ctr

managed_pid() {
    [ -s "$pidfile" ] || return 1
    pid=$(cat "$pidfile")
    case $pid in '' | *[!0-9]*) return 1 ;; esac
    kill -0 "$pid" 2>/dev/null || return 1
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = containerd ] || return 1
    echo "$pid"
}

socket_answers() {
    [ -S "$socket" ] || return 1
    if [ -x "$ctr_bin" ]; then
        timeout 5 "$ctr_bin" --address "$socket" version >/dev/null 2>&1
    fi
}

start() {
    mkdir -p "$(dirname "$pidfile")" "$(dirname "$logfile")"
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        setsid nohup "$binary" --config "$config" >>"$logfile" 2>&1 </dev/null &
    echo $! >"$pidfile"
    waited=0
    while ! socket_answers; do
        if ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
            echo "containerd exited at start: see $logfile" >&2
            tail -n 20 "$logfile" >&2
            exit 1
        fi
        if [ "$waited" -ge "$timeout" ]; then
            echo "containerd did not answer on $socket within ${timeout}s: see $logfile" >&2
            exit 1
        fi
        sleep 1
        waited=$((waited + 1))
    done
    echo "started containerd (pid $(cat "$pidfile"), config $config, log $logfile)"
}

stop_managed() {
    pid=$1
    kill -TERM "$pid"
    waited=0
    while kill -0 "$pid" 2>/dev/null; do
        if [ "$waited" -ge "$timeout" ]; then
            kill -KILL "$pid" 2>/dev/null
            sleep 1
            break
        fi
        sleep 1
        waited=$((waited + 1))
    done
    rm -f "$pidfile"
}

case $action in
status)
    if pid=$(managed_pid); then
        echo "containerd running (pid $pid, started by ARCH)"
    elif socket_answers; then
        echo "containerd running on $socket (not started by ARCH)"
    else
        echo "containerd not running"
    fi
    echo unchanged
    ;;
start)
    if pid=$(managed_pid); then
        echo "containerd already running (pid $pid)"
        echo unchanged
    elif socket_answers; then
        echo "containerd already answers on $socket (not started by ARCH: left alone)"
        echo unchanged
    else
        start
        echo changed
    fi
    ;;
restart)
    if pid=$(managed_pid); then
        stop_managed "$pid"
        start
        echo changed
    elif socket_answers; then
        echo "containerd on $socket was not started by ARCH: restart it yourself to apply $config" >&2
        echo unchanged
    else
        start
        echo changed
    fi
    ;;
*)
    echo "usage: $0 start|restart|status PIDFILE LOGFILE CONFIG SOCKET BINARY TIMEOUT" >&2
    exit 2
    ;;
esac
