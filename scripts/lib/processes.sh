# shellcheck shell=bash
# Start, readiness wait and stop for the im-logic and im-engine processes of scripts/run and
# scripts/test.
#
# Each process runs in a session of its own (setsid), so a Ctrl-C in the terminal reaches only
# the script, which then stops the processes in order. Functions return non-zero with a message
# on stderr on failure.

_IM_PROC_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# Pid of the command that im_run is waiting for, for a signal trap to stop; empty otherwise.
IM_FOREGROUND_PID=""

_im_proc_log() {
    printf '[%s] %s\n' "$1" "$2" >&2
}

# Prints the last lines of a log file to stderr, indented, if the file exists.
im_show_log_tail() {
    local file=$1 lines=${2:-30}
    if [[ -f $file ]]; then
        printf 'last %s lines of %s:\n' "$lines" "$file" >&2
        tail -n "$lines" "$file" | sed 's/^/    /' >&2
    fi
}

# Turns a listen address into one to connect to: 0.0.0.0 becomes 127.0.0.1 and [::] becomes
# [::1]. An address without a host part (":8080") also becomes 127.0.0.1.
im_connect_addr() {
    local addr=$1 host port
    host=${addr%:*}
    port=${addr##*:}
    case $host in
    "" | 0.0.0.0) host=127.0.0.1 ;;
    "[::]") host="[::1]" ;;
    esac
    printf '%s:%s' "$host" "$port"
}

# Succeeds when HOST:PORT accepts a TCP connection within 1 s. HOST may be [v6].
im_tcp_accepts() {
    local addr=$1 host port
    host=${addr%:*}
    host=${host#[}
    host=${host%]}
    port=${addr##*:}
    timeout 1 bash -c "exec 3<>/dev/tcp/$host/$port" 2>/dev/null
}

# Prints the pid of the process that listens on TCP port PORT, when ss(8) can see it (a
# process of another user needs root).
_im_listener_pid() {
    local port=$1
    command -v ss >/dev/null || return 1
    ss -Hltnp "sport = :$port" 2>/dev/null | grep -o 'pid=[0-9]*' | head -n 1 | cut -d = -f 2
}

# Fails with a message when something already listens on ADDR, because a readiness wait on that
# address would then succeed for the wrong process. The message names the listening process
# when ss(8) shows it, and points out a process whose executable lies in this checkout.
im_require_free_addr() {
    local name=$1 addr=$2 variable=$3 pid exe
    if ! im_tcp_accepts "$addr"; then
        return 0
    fi
    pid=$(_im_listener_pid "${addr##*:}" || true)
    exe=""
    if [[ -n $pid ]]; then
        exe=$(readlink "/proc/$pid/exe" 2>/dev/null || true)
        exe=${exe% (deleted)}
    fi
    if [[ -n $exe && $exe == "$_IM_PROC_REPO"/* ]]; then
        _im_proc_log "$name" "error: $addr is already in use by ${exe##*/} (pid $pid) of this checkout, likely left running by an earlier scripts/run: stop it with: kill $pid, or set $variable"
    elif [[ -n $pid ]]; then
        _im_proc_log "$name" "error: $addr is already in use by another program (pid $pid${exe:+, $exe}): stop it or set $variable"
    else
        _im_proc_log "$name" "error: $addr is already in use by another program: stop it or set $variable"
    fi
    return 1
}

# Text that starts the engine's start-up line. The engine logs that line under the target
# im_engine::ready once it serves, and the line names the scheme of its WebSocket listener.
IM_ENGINE_READY_LINE="INFO im_engine::ready: engine started "

# Prints the first group of the extended regular expression PATTERN matched in the start-up
# line of the engine's LOG. Fails when LOG has no such line or the line does not match.
_im_engine_ready_field() {
    local log=$1 pattern=$2 line
    line=$(grep -m 1 -F -- "$IM_ENGINE_READY_LINE" "$log") || return 1
    [[ $line =~ $pattern ]] || return 1
    printf '%s\n' "${BASH_REMATCH[1]}"
}

# Prints the scheme of the engine's WebSocket listener, ws or wss, from the start-up line in the
# engine's LOG ("... engine started ws_addr=127.0.0.1:8080 scheme=\"wss\" path=/ws ..."). Fails
# when LOG has no such line. Only the message and ws_addr precede scheme, and neither of them
# contains " scheme=".
im_engine_ws_scheme() {
    _im_engine_ready_field "$1" ' scheme="?(wss|ws)"?( |$)'
}

# Prints the path of the engine's WebSocket endpoint (its ws_path, such as /ws) from the
# start-up line in the engine's LOG, where it is the text between " path=" and " grpc_addr=".
# Fails when LOG has no such line.
im_engine_ws_path() {
    _im_engine_ready_field "$1" ' path=(/.*) grpc_addr='
}

# Starts COMMAND... in the background with stdout and stderr written to LOG (truncated first),
# and stores its process id in IM_STARTED_PID. NO_COLOR=1 keeps ANSI colour codes out of the
# log of programs that honour it, such as tracing-subscriber's fmt layer.
im_start_process() {
    local name=$1 log=$2
    shift 2
    if [[ ! -x $1 ]]; then
        _im_proc_log "$name" "error: $1 is not an executable file: build it first"
        return 1
    fi
    : >"$log"
    NO_COLOR=1 setsid "$@" >>"$log" 2>&1 </dev/null &
    IM_STARTED_PID=$!
    _im_proc_log "$name" "started (pid $IM_STARTED_PID, log: $log)"
}

# Waits up to TIMEOUT_S seconds until ADDR accepts TCP connections and, when READY_LINE is
# given, LOG has a line that contains it (a process may bind its port before it serves). Fails
# early, with the last lines of LOG, when process PID exits first.
im_wait_for_addr() {
    local name=$1 pid=$2 addr=$3 timeout_s=$4 log=$5 ready_line=${6:-}
    local deadline=$((SECONDS + timeout_s))
    while ((SECONDS < deadline)); do
        if ! kill -0 "$pid" 2>/dev/null; then
            local status=0
            wait "$pid" 2>/dev/null || status=$?
            _im_proc_log "$name" "error: exited with status $status before accepting connections on $addr"
            im_show_log_tail "$log"
            return 1
        fi
        if im_tcp_accepts "$addr" && { [[ -z $ready_line ]] || grep -qF -- "$ready_line" "$log"; }; then
            _im_proc_log "$name" "ready on $addr"
            return 0
        fi
        sleep 0.2
    done
    _im_proc_log "$name" "error: not serving on $addr after $timeout_s s"
    im_show_log_tail "$log"
    return 1
}

# Runs COMMAND... in the background and waits for it. Bash runs a trap only once the foreground
# command ends, so a SIGTERM during a long build would otherwise wait for the build. While the
# command runs, IM_FOREGROUND_PID is its pid, for the trap to stop it with im_stop_foreground.
# The command runs in a session of its own, so that its process group contains it and its
# children, which the stop signals together: cargo, ended by SIGTERM, leaves its running rustc
# processes behind.
im_run() {
    setsid -w "$@" &
    IM_FOREGROUND_PID=$!
    if declare -F im_note_started >/dev/null; then
        im_note_started build "$IM_FOREGROUND_PID" "$PWD"
    fi
    local status=0
    wait "$IM_FOREGROUND_PID" || status=$?
    IM_FOREGROUND_PID=""
    if declare -F im_forget_started >/dev/null; then
        im_forget_started build
    fi
    return "$status"
}

# Stops the command that im_run is waiting for, with its children: SIGTERM to its process
# group, then SIGKILL to the group when it still runs after TIMEOUT_S seconds.
im_stop_foreground() {
    local name=$1 timeout_s=${2:-10} pid=${IM_FOREGROUND_PID:-}
    if [[ -z $pid ]]; then
        return 0
    fi
    kill -TERM -- "-$pid" 2>/dev/null || true
    local deadline=$((SECONDS + timeout_s))
    while kill -0 -- "-$pid" 2>/dev/null; do
        if ((SECONDS >= deadline)); then
            _im_proc_log "$name" "warning: still running $timeout_s s after SIGTERM, sending SIGKILL"
            kill -KILL -- "-$pid" 2>/dev/null || true
            break
        fi
        sleep 0.1
    done
    wait "$pid" 2>/dev/null || true
    _im_proc_log "$name" "stopped"
}

# Sends SIGTERM to PID and waits up to TIMEOUT_S seconds for it to exit, then sends SIGKILL.
# Does nothing when PID is empty, and only reports the stop when PID has exited already.
im_stop_process() {
    local name=$1 pid=$2 timeout_s=${3:-10}
    if [[ -z $pid ]]; then
        return 0
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
        wait "$pid" 2>/dev/null || true
        _im_proc_log "$name" "stopped"
        return 0
    fi

    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + timeout_s))
    while ((SECONDS < deadline)); do
        if ! kill -0 "$pid" 2>/dev/null; then
            wait "$pid" 2>/dev/null || true
            _im_proc_log "$name" "stopped"
            return 0
        fi
        sleep 0.1
    done

    _im_proc_log "$name" "warning: still running $timeout_s s after SIGTERM, sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}
