# shellcheck shell=bash
# One scripts/run per checkout, and the processes that a run started, for scripts/run.
#
#   im_lock_checkout LOCK_FILE   take the lock that one scripts/run holds for its lifetime, or
#                                fail naming the pid of the run that holds it
#   im_stop_run LOCK_FILE TIMEOUT_S [RECORDS_FILE]
#                                stop the run that holds the lock, if one does, else the
#                                processes in RECORDS_FILE that a killed run left running
#   im_note_started NAME PID KEY record a started process in $IM_STARTED_PIDS_FILE
#   im_forget_started NAME       drop the records of NAME, which has exited
#   im_stop_leftovers            stop the recorded processes that an earlier run left behind
#
# The lock is a flock(1) on file descriptor 9, which the kernel releases when the script exits
# in any way, kill -9 included. Every process that the script starts inherits its descriptors,
# and one that kept descriptor 9 open would hold the lock after the script is gone. So callers
# close it with `9>&-` on each command that starts a process that may outlive the script
# (bash keeps its own copy of the descriptor close-on-exec while the command runs).
#
# Functions return non-zero with a message on stderr on failure.

# File of started processes, one "NAME PID KEY" line each, or empty to record nothing. KEY
# distinguishes the process from an unrelated one that later got the same pid: it is the
# executable of im-logic and im-engine, the data directory of PostgreSQL and the working
# directory of Redis and of the build (cargo).
IM_STARTED_PIDS_FILE=""
# Number of recorded processes that the last im_stop_leftovers found running.
IM_LEFTOVERS_FOUND=0

_im_checkout_log() {
    printf '[run] %s\n' "$*" >&2
}

# Takes an exclusive lock on LOCK_FILE (created if missing) on descriptor 9 and writes this
# script's pid into it. Fails, naming the pid written there, when another process has it locked.
im_lock_checkout() {
    local path=$1 holder
    _im_require_plain_file "$path" || return 1
    # Opened for appending, so that a run that fails to get the lock keeps the holder's pid.
    exec 9>>"$path"
    if ! flock -n 9; then
        holder=$(<"$path")
        exec 9>&-
        if [[ $holder =~ ^[0-9]+$ ]]; then
            _im_checkout_log "error: scripts/run is already running in this checkout (pid $holder): stop it with scripts/run --stop, with Ctrl-C in its terminal, or with: kill $holder"
        else
            _im_checkout_log "error: scripts/run is already running in this checkout (lock $path held): stop that run first"
        fi
        return 1
    fi
    printf '%s\n' "$$" >"$path"
}

# Fails with a message when PATH exists and is not a regular file. The scripts write and
# truncate their records in .data/, which through a symbolic link would empty its target.
_im_require_plain_file() {
    local path=$1
    if [[ -L $path ]]; then
        _im_checkout_log "error: $path is a symbolic link, not the file scripts/run writes: remove it"
        return 1
    fi
    if [[ -e $path && ! -f $path ]]; then
        _im_checkout_log "error: $path is not a regular file: remove it"
        return 1
    fi
}

# Sends SIGTERM to the scripts/run that holds the lock on LOCK_FILE and waits up to TIMEOUT_S
# seconds for it to release the lock, which it does once it has stopped what it started. A
# pid left in the file by a run that was killed (kill -9) is never signalled, because no
# process holds the lock then. When no run holds the lock, takes it and stops the processes in
# RECORDS_FILE that such a killed run left running, as the next run would (im_stop_leftovers).
im_stop_run() {
    local path=$1 timeout_s=$2 records=${3:-} holder status
    _im_require_plain_file "$path" || return 1
    if [[ -n $records ]]; then
        _im_require_plain_file "$records" || return 1
    fi
    if [[ ! -e $path && ! -s $records ]]; then
        _im_checkout_log "no scripts/run is running in this checkout"
        return 0
    fi
    # Opened for appending, as by im_lock_checkout, because a free lock is kept for the stop
    # of the leftovers and this script's pid is written into it.
    exec 9>>"$path"
    if flock -n 9; then
        status=0
        _im_stop_run_leftovers "$path" "$records" || status=1
        exec 9>&-
        return "$status"
    fi
    holder=$(<"$path")
    if [[ ! $holder =~ ^[0-9]+$ ]]; then
        exec 9>&-
        _im_checkout_log "error: $path is locked but holds no pid (\"$holder\"): stop that run with Ctrl-C in its terminal"
        return 1
    fi
    _im_checkout_log "stopping scripts/run (pid $holder)"
    kill -TERM "$holder" 2>/dev/null || true
    if ! flock -w "$timeout_s" 9; then
        exec 9>&-
        _im_checkout_log "error: scripts/run (pid $holder) is still running $timeout_s s after SIGTERM: stop it with: kill -KILL $holder"
        return 1
    fi
    exec 9>&-
    _im_checkout_log "scripts/run (pid $holder) stopped"
}

# Stops the processes in RECORDS_FILE that a killed run left running, while this script holds
# the lock on LOCK_FILE (descriptor 9), so that no run starts meanwhile. This script's pid
# replaces the killed run's in LOCK_FILE until the end, because the stale pid may belong to
# another program by now. A second `scripts/run --stop` therefore signals this script, which
# ignores the signal as a stopping run does.
_im_stop_run_leftovers() {
    local path=$1 records=$2 status=0 saved_traps
    printf '%s\n' "$$" >"$path"
    saved_traps=$(trap -p INT TERM)
    trap '' INT TERM
    IM_LEFTOVERS_FOUND=0
    if [[ -n $records ]]; then
        IM_STARTED_PIDS_FILE=$records im_stop_leftovers || status=1
    fi
    : >"$path"
    trap - INT TERM
    eval "$saved_traps"
    if [[ $status -ne 0 ]]; then
        return 1
    fi
    if [[ $IM_LEFTOVERS_FOUND -eq 0 ]]; then
        _im_checkout_log "no scripts/run is running in this checkout"
    elif [[ $IM_LEFTOVERS_FOUND -eq 1 ]]; then
        _im_checkout_log "stopped the process that a killed scripts/run of this checkout left running"
    else
        _im_checkout_log "stopped the $IM_LEFTOVERS_FOUND processes that a killed scripts/run of this checkout left running"
    fi
}

# Appends "NAME PID KEY" to IM_STARTED_PIDS_FILE when that is set.
im_note_started() {
    local name=$1 pid=$2 key=$3
    if [[ -n $IM_STARTED_PIDS_FILE && -n $pid ]]; then
        printf '%s %s %s\n' "$name" "$pid" "$key" >>"$IM_STARTED_PIDS_FILE"
    fi
}

# Drops the records of NAME from IM_STARTED_PIDS_FILE, for a process that has exited, so that a
# later process that gets its pid is never taken for it.
im_forget_started() {
    local name=$1
    if [[ -n $IM_STARTED_PIDS_FILE && -f $IM_STARTED_PIDS_FILE ]]; then
        sed -i "/^$name /d" "$IM_STARTED_PIDS_FILE"
    fi
}

# Prints the path of the executable of process PID, without the " (deleted)" that Linux
# appends when the file was replaced since the start, as a rebuild does.
_im_process_exe() {
    local exe
    exe=$(readlink "/proc/$1/exe" 2>/dev/null) || return 1
    printf '%s' "${exe% (deleted)}"
}

# Succeeds when process PID is alive and is the NAME process identified by KEY, so a pid that
# the kernel has since given to an unrelated process is never signalled. KEY may name a path
# through symbolic links, as when scripts/run was started through a link to its checkout, while
# /proc shows the resolved path.
_im_is_started_process() {
    local name=$1 pid=$2 key=$3 exe
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    exe=$(_im_process_exe "$pid") || return 1
    case $name in
    build)
        # cargo, in the checkout it was started in.
        [[ ${exe##*/} == cargo && /proc/$pid/cwd -ef $key ]]
        ;;
    logic | engine)
        # Compared as paths, not as files, because a rebuild replaces the file.
        [[ $exe == "$(readlink -m -- "$key")" ]]
        ;;
    postgres)
        # The postmaster runs as `postgres -D DATA`.
        [[ ${exe##*/} == postgres ]] && tr '\0' '\n' <"/proc/$pid/cmdline" | grep -qxF -- "$key"
        ;;
    redis)
        # Redis overwrites its command line with its address, but runs in its --dir.
        [[ ${exe##*/} == redis-* && /proc/$pid/cwd -ef $key ]]
        ;;
    *)
        return 1
        ;;
    esac
}

# Succeeds while process PID runs. A zombie counts as exited, because it has closed its files and
# ports. `kill -0` finds it until its parent reaps it, and the parent of a leftover is init, which
# may reap late or, in some containers, never.
_im_process_running() {
    local stat
    { read -r stat <"/proc/$1/stat"; } 2>/dev/null || return 1
    # The state follows the command name, which is in parentheses and may contain spaces.
    stat=${stat##*) }
    [[ ${stat:0:1} != Z && ${stat:0:1} != X ]]
}

# Sends SIGNAL to PID, or to its whole process group when the fifth argument is "group", and
# waits up to TIMEOUT_S seconds for PID to exit.
_im_stop_leftover() {
    local name=$1 pid=$2 signal=$3 timeout_s=$4 target=$2
    if [[ ${5:-} == group ]]; then
        target=-$pid
    fi
    _im_checkout_log "stopping $name (pid $pid), left running by an earlier scripts/run of this checkout"
    kill "-$signal" -- "$target" 2>/dev/null || true
    local deadline=$((SECONDS + timeout_s))
    while ((SECONDS < deadline)); do
        if ! _im_process_running "$pid"; then
            return 0
        fi
        sleep 0.1
    done
    _im_checkout_log "error: $name (pid $pid) is still running $timeout_s s after SIG$signal: stop it with: kill -KILL $pid"
    return 1
}

# Stops the processes listed in IM_STARTED_PIDS_FILE that still run, then empties the file,
# and sets IM_LEFTOVERS_FOUND to the number of them. They were started by a run of this
# checkout that ended without stopping them, as after kill -9 or an out-of-memory kill. The
# caller holds the lock, so no live run owns them any more. They are stopped rather than
# reported, because a user who starts scripts/run again wants a running system, and their ports
# and data directories would block the new run anyway.
im_stop_leftovers() {
    local file=$IM_STARTED_PIDS_FILE
    IM_LEFTOVERS_FOUND=0
    [[ -n $file && -f $file ]] || return 0
    local -A pids=() keys=()
    local name pid key status=0
    while read -r name pid key; do
        if [[ -n $name ]] && _im_is_started_process "$name" "$pid" "$key"; then
            pids[$name]=$pid
            keys[$name]=$key
        fi
    done <"$file"
    IM_LEFTOVERS_FOUND=${#pids[@]}

    # The order of a normal stop: the engine, the logic tier, then the services. PostgreSQL
    # gets SIGINT, its fast shutdown, and the others get SIGTERM.
    for name in build engine logic redis postgres; do
        [[ -n ${pids[$name]:-} ]] || continue
        if [[ $name == build ]]; then
            # A build runs in a process group of its own (im_run), which contains its rustc
            # processes too.
            _im_stop_leftover "the build (cargo)" "${pids[$name]}" TERM 15 group || status=1
        elif [[ $name == postgres ]]; then
            _im_stop_leftover "PostgreSQL in ${keys[$name]}" "${pids[$name]}" INT 30 || status=1
        elif [[ $name == redis ]]; then
            _im_stop_leftover Redis "${pids[$name]}" TERM 10 || status=1
        else
            _im_stop_leftover "im-$name" "${pids[$name]}" TERM 15 || status=1
        fi
    done
    if [[ $status -eq 0 ]]; then
        : >"$file"
    fi
    return "$status"
}
