#!/bin/sh
# Start / stop / restart ARCH's exit watcher (`archctl watch-exits`, arch-exit-watch.service)
# without systemd: hosts whose PID 1 is not systemd and that are not a chroot. The process is
# tracked by its pidfile only, and signalled only while its command line still holds
# `watch-exits` (a reused pid is never signalled).
#   exit-watch-direct.sh start|restart|stop|status PIDFILE LOGFILE ARCHCTL CONFIG SOCKET TIMEOUT
# The last line of stdout is "changed" or "unchanged" (for Ansible's changed_when); for status it
# is what start would report.
set -u
action=$1 pidfile=$2 logfile=$3 archctl=$4 config=$5 socket=$6 timeout=$7
# archctl exits at once on a malformed config or without ctr: a watcher still up after this
# many seconds has started.
settle_seconds=1

is_watcher() {
    tr '\0' '\n' <"/proc/$1/cmdline" 2>/dev/null | grep -qx watch-exits
}

managed_pid() {
    [ -s "$pidfile" ] || return 1
    pid=$(cat "$pidfile")
    case $pid in '' | *[!0-9]*) return 1 ;; esac
    kill -0 "$pid" 2>/dev/null || return 1
    is_watcher "$pid" || return 1
    echo "$pid"
}

start() {
    mkdir -p "$(dirname "$pidfile")" "$(dirname "$logfile")"
    ARCH_CONFIG=$config PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        setsid nohup "$archctl" --address "$socket" watch-exits >>"$logfile" 2>&1 </dev/null &
    echo $! >"$pidfile"
    sleep "$settle_seconds"
    if ! pid=$(managed_pid); then
        rm -f "$pidfile"
        echo "the exit watcher exited at start: see $logfile" >&2
        tail -n 20 "$logfile" >&2
        exit 1
    fi
    echo "started the exit watcher (pid $pid, containerd $socket, log $logfile)"
}

# SIGTERM: archctl stops its `ctr events` child and exits. After TIMEOUT seconds, SIGKILL to its
# process group (setsid made the watcher its leader), so that no ctr child is left behind.
stop_managed() {
    pid=$1
    kill -TERM "$pid" 2>/dev/null
    waited=0
    while kill -0 "$pid" 2>/dev/null && is_watcher "$pid"; do
        if [ "$waited" -ge "$timeout" ]; then
            # dash's kill takes no `--`: a negative pid right after the signal is a group.
            if [ "$(ps -o pgid= -p "$pid" | tr -d ' ')" = "$pid" ]; then
                kill -KILL "-$pid" 2>/dev/null
            else
                kill -KILL "$pid" 2>/dev/null
            fi
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
        echo "exit watcher running (pid $pid)"
        echo unchanged
    else
        echo "exit watcher not running (start would start it)"
        echo changed
    fi
    ;;
start)
    if pid=$(managed_pid); then
        echo "exit watcher already running (pid $pid)"
        echo unchanged
    else
        start
        echo changed
    fi
    ;;
restart)
    if pid=$(managed_pid); then
        stop_managed "$pid"
    fi
    start
    echo changed
    ;;
stop)
    if pid=$(managed_pid); then
        stop_managed "$pid"
        echo "stopped the exit watcher (pid $pid)"
        echo changed
    else
        rm -f "$pidfile"
        echo "exit watcher not running"
        echo unchanged
    fi
    ;;
*)
    echo "usage: $0 start|restart|stop|status PIDFILE LOGFILE ARCHCTL CONFIG SOCKET TIMEOUT" >&2
    exit 2
    ;;
esac
