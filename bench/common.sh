# Shell functions shared by the bench/ drivers (sourced, not run).
# They expect $work (the run's temp directory) to be set, and start_daemon
# also $BUILD_DIR and $pids.

free_port() {
    /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_port() { # wait_port PORT PID NAME: wait until PORT accepts, or fail with NAME's log
    i=0
    until /usr/bin/python3 -c "import socket; socket.create_connection(('127.0.0.1',$1),1).close()" 2>/dev/null; do
        kill -0 "$2" 2>/dev/null || { echo "$3 exited; its log:" >&2; cat "$work/$3.log" >&2; exit 1; }
        i=$((i + 1)); [ $i -lt 100 ] || { echo "$3 did not listen on $1" >&2; exit 1; }
        sleep 0.05
    done
}

# run_case KEY ROLE LABEL RUNS COMMAND...: run COMMAND RUNS times and append
# the figures of the run with the median value of the output field KEY
# (e.g. msgs/s) to $work/results as "ROLE|LABEL|key value;...".
run_case() {
    key=$1 role=$2 label=$3 runs=$4
    shift 4
    echo "$label ($runs run(s))" >&2
    r=1
    while [ $r -le "$runs" ]; do
        if ! "$@" >"$work/case.$r"; then
            echo "case failed: $label" >&2
            cat "$work/case.$r" >&2
            exit 1
        fi
        echo "$(awk -v k="$key" '$1 == k { print $2 }' "$work/case.$r") $r" >>"$work/case.rank"
        r=$((r + 1))
    done
    mid=$(sort -n "$work/case.rank" | sed -n "$(((runs + 1) / 2))p" | cut -d' ' -f2)
    printf '%s|%s|%s\n' "$role" "$label" "$(tr '\n' ';' <"$work/case.$mid")" >>"$work/results"
    rm -f "$work"/case.*
}

# start_daemon: run mailpoold on $work/mailpool.conf (log in $work/mailpoold.log),
# add it to $pids, set $daemon_pid, and wait until both of its sockets exist.
start_daemon() {
    "$BUILD_DIR/mailpoold" -c "$work/mailpool.conf" 2>"$work/mailpoold.log" &
    daemon_pid=$!
    pids="$pids $daemon_pid"
    i=0
    while [ ! -S "$work/submit.sock" ] || [ ! -S "$work/control.sock" ]; do
        kill -0 "$daemon_pid" 2>/dev/null || { cat "$work/mailpoold.log" >&2; exit 1; }
        i=$((i + 1)); [ $i -lt 100 ] || { echo "mailpoold did not start" >&2; exit 1; }
        sleep 0.05
    done
}
