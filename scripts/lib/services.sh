# shellcheck shell=bash
# Private PostgreSQL and Redis instances for development and tests.
#
# Source this file, then call:
#   ensure_packages   install the PostgreSQL and Redis server packages with apt-get if missing
#   ensure_chromium   install Debian's chromium (for the web client's browser test) if missing
#   check_script_settings  reject a variable that has the prefix of a setting below but is
#                     not one, such as a misspelt IM_PG_PROT (start_services calls it)
#   start_services    start (or reuse) our own instances and export their URLs
#   stop_services     stop the instances that start_services started in this shell
#
# The instances live in $REPO/.data and listen on loopback only, on their own ports, so the
# clusters and services that the Debian packages set up are never used or touched.
#
# Settings (environment):
#   IM_LOGIC_DATABASE_URL  use this PostgreSQL instead of starting one (checked with pg_isready and psql)
#   IM_LOGIC_REDIS_URL     use this Redis instead of starting one (checked with redis-cli ping)
#   IM_PG_PORT             port of our PostgreSQL on 127.0.0.1, default 55432
#   IM_REDIS_PORT          port of our Redis on 127.0.0.1, default 56379
#   IM_DATA_DIR            directory for data, sockets and logs, default $REPO/.data
#   IM_PG_BIN_DIR          PostgreSQL bin directory, default the newest /usr/lib/postgresql/*/bin
#   IM_PG_SHARED_ROOT      where a cluster goes when IM_DATA_DIR cannot hold it, default /var/tmp
#   IM_REDIS_SERVER_BIN    redis-server executable, default the one in PATH
#
# Exported by start_services: IM_LOGIC_DATABASE_URL, IM_LOGIC_REDIS_URL, IM_PG_BIN_DIR,
# IM_REDIS_SERVER_BIN (for tests that start throw-away instances of their own) and IM_DATA_DIR.
#
# Every function returns non-zero with a message on stderr on failure, so it works under
# `set -euo pipefail` and in an `if`.

IM_REPO_ROOT=${IM_REPO_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
IM_DATA_DIR=${IM_DATA_DIR:-$IM_REPO_ROOT/.data}

# The variables that scripts/lib reads (the settings above, IM_WEB_DIR of web.sh and
# IM_REPO_ROOT), and their prefixes. Another variable with one of these prefixes is most likely
# misspelt, and the default would apply in its place without a word.
_IM_KNOWN_SETTINGS=(IM_PG_PORT IM_PG_BIN_DIR IM_PG_SHARED_ROOT IM_REDIS_PORT
    IM_REDIS_SERVER_BIN IM_DATA_DIR IM_WEB_DIR IM_REPO_ROOT)
_IM_SETTING_PREFIXES=(IM_PG_ IM_REDIS_ IM_DATA_ IM_WEB_ IM_REPO_)

# Set to 1 by start_services for each instance that it started in this shell.
_IM_PG_STARTED=0
_IM_REDIS_STARTED=0
_IM_PG_DATA=""
_IM_REDIS_PORT=""
_IM_REDIS_PIDFILE=""

_im_log() {
    printf '[services] %s\n' "$*" >&2
}

_im_error() {
    printf '[services] error: %s\n' "$*" >&2
}

# Prints the last lines of a log file to stderr, indented, if the file exists.
_im_show_log_tail() {
    local file=$1
    if [[ -f $file ]]; then
        printf '[services] last lines of %s:\n' "$file" >&2
        tail -n 20 "$file" | sed 's/^/    /' >&2
    fi
}

# Succeeds when something accepts TCP connections on 127.0.0.1:PORT.
_im_port_in_use() {
    local port=$1
    timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$port" 2>/dev/null
}

# Records a started server with im_note_started of scripts/lib/checkout.sh, when the caller
# sourced that file, so that a later scripts/run can stop it if this one is killed.
_im_note_started() {
    if declare -F im_note_started >/dev/null; then
        im_note_started "$@"
    fi
}

# Runs a command as the account that owns the PostgreSQL data: `postgres` when we are root,
# because the server refuses to run as root, and the current user otherwise.
_im_as_pg_owner() {
    if [[ $EUID -eq 0 ]]; then
        # From /, which postgres may enter, unlike a private checkout; else each command warns
        # that it could not change to the working directory.
        (cd / && runuser -u postgres -- "$@")
    else
        "$@"
    fi
}

_im_pg_owner() {
    if [[ $EUID -eq 0 ]]; then
        printf 'postgres'
    else
        id -un
    fi
}

_im_find_pg_bin_dir() {
    local newest
    newest=$(compgen -G '/usr/lib/postgresql/*/bin/postgres' | sort -V | tail -n 1 || true)
    if [[ -z $newest ]]; then
        return 1
    fi
    dirname "$newest"
}

# Fails, naming the known settings, when the environment contains a variable with one of
# _IM_SETTING_PREFIXES that is not in _IM_KNOWN_SETTINGS.
check_script_settings() {
    local name prefix unknown=()
    for name in $(compgen -e); do
        for prefix in "${_IM_SETTING_PREFIXES[@]}"; do
            if [[ $name == "$prefix"* && " ${_IM_KNOWN_SETTINGS[*]} " != *" $name "* ]]; then
                unknown+=("$name")
            fi
        done
    done
    if [[ ${#unknown[@]} -eq 0 ]]; then
        return 0
    fi
    local names known
    names=$(printf '%s, ' "${unknown[@]}")
    known=$(printf '%s, ' "${_IM_KNOWN_SETTINGS[@]}")
    if [[ ${#unknown[@]} -eq 1 ]]; then
        _im_error "unknown variable ${names%, }: the scripts read ${known%, }; fix the name or unset it"
    else
        _im_error "unknown variables ${names%, }: the scripts read ${known%, }; fix the names or unset them"
    fi
    return 1
}

# Installs the postgresql and redis-server packages with apt-get, each only if its server is missing.
ensure_packages() {
    local missing=()
    if ! _im_find_pg_bin_dir >/dev/null; then
        missing+=(postgresql)
    fi
    if ! command -v redis-server >/dev/null; then
        missing+=(redis-server)
    fi
    if [[ ${#missing[@]} -eq 0 ]]; then
        return 0
    fi

    local sudo=()
    if [[ $EUID -ne 0 ]]; then
        if ! command -v sudo >/dev/null; then
            _im_error "${missing[*]} missing and installing needs root: run as root or install sudo"
            return 1
        fi
        sudo=(sudo)
    fi

    _im_log "installing ${missing[*]} with apt-get"
    if ! "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q; then
        _im_error "apt-get update failed"
        return 1
    fi
    if ! "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends "${missing[@]}"; then
        _im_error "apt-get install ${missing[*]} failed"
        return 1
    fi

    if ! _im_find_pg_bin_dir >/dev/null || ! command -v redis-server >/dev/null; then
        _im_error "postgres or redis-server is still missing after apt-get install"
        return 1
    fi
}

# Installs Debian's chromium package with apt-get when /usr/bin/chromium is missing. The browser
# test of the web client drives it; no other browser build is ever downloaded.
ensure_chromium() {
    if [[ -x /usr/bin/chromium ]]; then
        return 0
    fi
    local sudo=()
    if [[ $EUID -ne 0 ]]; then
        if ! command -v sudo >/dev/null; then
            _im_error "chromium missing and installing needs root: run as root or install sudo"
            return 1
        fi
        sudo=(sudo)
    fi

    _im_log "installing chromium with apt-get"
    if ! "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q; then
        _im_error "apt-get update failed"
        return 1
    fi
    if ! "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends chromium; then
        _im_error "apt-get install chromium failed"
        return 1
    fi
    if [[ ! -x /usr/bin/chromium ]]; then
        _im_error "/usr/bin/chromium is still missing after apt-get install chromium"
        return 1
    fi
}

# Sets IM_PG_BIN_DIR and IM_REDIS_SERVER_BIN unless the caller set them.
_im_locate_binaries() {
    if [[ -z ${IM_PG_BIN_DIR:-} ]]; then
        if ! IM_PG_BIN_DIR=$(_im_find_pg_bin_dir); then
            _im_error "no /usr/lib/postgresql/*/bin/postgres found: run ensure_packages or set IM_PG_BIN_DIR"
            return 1
        fi
    fi
    if [[ ! -x $IM_PG_BIN_DIR/postgres ]]; then
        _im_error "IM_PG_BIN_DIR=$IM_PG_BIN_DIR contains no postgres executable"
        return 1
    fi

    if [[ -z ${IM_REDIS_SERVER_BIN:-} ]]; then
        if ! IM_REDIS_SERVER_BIN=$(command -v redis-server); then
            _im_error "redis-server not found in PATH: run ensure_packages or set IM_REDIS_SERVER_BIN"
            return 1
        fi
    fi
    export IM_PG_BIN_DIR IM_REDIS_SERVER_BIN
}

# Starts our PostgreSQL and Redis unless their URLs are given, and exports the URLs.
start_services() {
    check_script_settings || return 1
    _im_locate_binaries || return 1
    mkdir -p "$IM_DATA_DIR" || return 1
    # Absolute, because the PostgreSQL commands run from / (see _im_as_pg_owner).
    IM_DATA_DIR=$(cd "$IM_DATA_DIR" && pwd) || return 1
    export IM_DATA_DIR

    if [[ -n ${IM_LOGIC_DATABASE_URL:-} ]]; then
        _im_check_given_postgres || return 1
    else
        _im_start_postgres || return 1
    fi

    if [[ -n ${IM_LOGIC_REDIS_URL:-} ]]; then
        _im_check_given_redis || return 1
    else
        _im_start_redis || return 1
    fi
}

# Stops the instances that start_services started in this shell; reused or given ones stay up.
stop_services() {
    local status=0
    if [[ $_IM_REDIS_STARTED -eq 1 ]]; then
        _im_stop_redis || status=1
        _IM_REDIS_STARTED=0
    fi
    if [[ $_IM_PG_STARTED -eq 1 ]]; then
        _im_stop_postgres || status=1
        _IM_PG_STARTED=0
    fi
    return "$status"
}

# ---------------------------------------------------------------------------------------------
# PostgreSQL

_im_check_given_postgres() {
    if ! "$IM_PG_BIN_DIR/pg_isready" -q -t 5 -d "$IM_LOGIC_DATABASE_URL"; then
        _im_error "PostgreSQL at IM_LOGIC_DATABASE_URL does not accept connections (pg_isready failed)"
        return 1
    fi
    if ! PGCONNECT_TIMEOUT=5 "$IM_PG_BIN_DIR/psql" -q -X -tA -c 'SELECT 1' "$IM_LOGIC_DATABASE_URL" >/dev/null; then
        _im_error "cannot run a query on IM_LOGIC_DATABASE_URL (psql failed, see above)"
        return 1
    fi
    _im_log "using the PostgreSQL given in IM_LOGIC_DATABASE_URL"
}

# Picks the directory for the cluster and its socket. It is $IM_DATA_DIR unless the data owner
# cannot reach it (a checkout under a private home directory when we are root) or a socket path
# in it would pass the 107-byte limit of Unix socket paths; then a directory under /var/tmp.
_im_pg_base_dir() {
    local port=$1 base=$IM_DATA_DIR
    local socket_path="$base/pg-run/.s.PGSQL.$port"
    if _im_as_pg_owner test -x "$base" 2>/dev/null && ((${#socket_path} <= 100)); then
        printf '%s' "$base"
        return 0
    fi

    local key
    key=$(printf '%s' "$IM_DATA_DIR" | cksum | cut -d ' ' -f 1)
    base=${IM_PG_SHARED_ROOT:-/var/tmp}/im-pg-$key
    _im_log "$(_im_pg_owner) cannot use $IM_DATA_DIR (no access or socket path too long): keeping PostgreSQL in $base"
    printf '%s' "$base"
}

_im_start_postgres() {
    local port=${IM_PG_PORT:-55432}
    local base data socket_dir log
    base=$(_im_pg_base_dir "$port") || return 1
    data=$base/pg
    socket_dir=$base/pg-run
    log=$base/pg.log
    _IM_PG_DATA=$data

    _im_prepare_pg_dirs "$base" "$data" "$socket_dir" "$log" || return 1
    if [[ $base != "$IM_DATA_DIR" ]]; then
        _im_claim_shared_pg_dir "$base" || return 1
        _im_sweep_orphan_pg_dirs "$base"
    fi
    if [[ ! -f $data/PG_VERSION ]]; then
        _im_init_pg_cluster "$data" "$log" || return 1
    fi
    _im_check_pg_version "$data" || return 1

    if _im_as_pg_owner "$IM_PG_BIN_DIR/pg_ctl" status -D "$data" >/dev/null 2>&1; then
        _im_reuse_postgres "$data" "$port" || return 1
    else
        # Set before the launch: a signal that arrives while pg_ctl waits for the server runs
        # the caller's trap as soon as pg_ctl returns, and the trap must stop what started.
        _IM_PG_STARTED=1
        _im_launch_postgres "$data" "$socket_dir" "$port" "$log" || return 1
        _im_note_started postgres "$(head -n 1 "$data/postmaster.pid" 2>/dev/null)" "$data"
    fi

    _im_create_pg_database "$port" im "$log" || return 1
    export IM_LOGIC_DATABASE_URL="postgres://postgres@127.0.0.1:$port/im"
}

# Records in a cluster directory outside IM_DATA_DIR which data directory it serves, so that
# a later start can tell when that checkout is gone.
_im_claim_shared_pg_dir() {
    local base=$1 owner_dir
    owner_dir=$(cd "$IM_DATA_DIR" && pwd) || return 1
    printf '%s\n' "$owner_dir" >"$base/data-dir"
}

# Deletes the cluster directories under IM_PG_SHARED_ROOT whose data directory no longer
# exists, such as those of deleted clean clones, except `keep`. A directory that names no data
# directory (made before this check existed), or whose server still runs, is left alone.
_im_sweep_orphan_pg_dirs() {
    local keep=$1 dir owner_dir
    for dir in "${IM_PG_SHARED_ROOT:-/var/tmp}"/im-pg-*; do
        [[ -d $dir && $dir != "$keep" && -f $dir/data-dir ]] || continue
        owner_dir=$(<"$dir/data-dir")
        [[ $owner_dir == /* && ! -e $owner_dir ]] || continue
        if [[ -f $dir/pg/postmaster.pid ]]; then
            continue
        fi
        _im_log "removing $dir: the data directory it served, $owner_dir, is gone"
        rm -rf -- "$dir"
    done
}

_im_prepare_pg_dirs() {
    local base=$1 data=$2 socket_dir=$3 log=$4 owner
    owner=$(_im_pg_owner)
    if ! mkdir -p "$data" "$socket_dir" || ! touch "$log"; then
        _im_error "cannot create $data, $socket_dir or $log"
        return 1
    fi
    if [[ $EUID -eq 0 ]]; then
        chown "$owner:" "$data" "$socket_dir" "$log" || return 1
    fi
    chmod 700 "$data" || return 1
    if ! _im_as_pg_owner test -w "$data" || ! _im_as_pg_owner test -w "$log"; then
        _im_error "user $owner cannot write $data or $log (base directory $base)"
        return 1
    fi
}

# Creates the cluster: trust authentication, reachable only through its socket and 127.0.0.1.
_im_init_pg_cluster() {
    local data=$1 log=$2
    _im_log "creating a PostgreSQL cluster in $data"
    if ! _im_as_pg_owner "$IM_PG_BIN_DIR/initdb" -D "$data" -U postgres --auth=trust \
        --encoding=UTF8 --no-locale >>"$log" 2>&1; then
        _im_error "initdb failed, see $log"
        _im_show_log_tail "$log"
        return 1
    fi

    # Replaces the default pg_hba.conf, which also trusts ::1 and replication connections.
    _im_as_pg_owner tee "$data/pg_hba.conf" >/dev/null <<'EOF'
# Written by scripts/lib/services.sh: local development and tests only.
local all all              trust
host  all all 127.0.0.1/32 trust
EOF
    # Port, addresses and socket directory are rewritten into im.conf at every start.
    printf "\ninclude_if_exists = 'im.conf'\n" | _im_as_pg_owner tee -a "$data/postgresql.conf" >/dev/null
}

_im_check_pg_version() {
    local data=$1 cluster_version bin_version
    cluster_version=$(<"$data/PG_VERSION")
    bin_version=$(basename "$(dirname "$IM_PG_BIN_DIR")")
    if [[ $cluster_version != "$bin_version" ]]; then
        _im_error "$data was created by PostgreSQL $cluster_version but $IM_PG_BIN_DIR is $bin_version: delete $data or set IM_PG_BIN_DIR"
        return 1
    fi
}

_im_reuse_postgres() {
    local data=$1 port=$2 running_port
    running_port=$(sed -n 4p "$data/postmaster.pid" 2>/dev/null || true)
    if [[ $running_port != "$port" ]]; then
        _im_error "our PostgreSQL in $data already runs on port ${running_port:-unknown}, not $port: set IM_PG_PORT=${running_port:-PORT} or stop it with: $(_im_stop_pg_hint "$data")"
        return 1
    fi
    _im_log "reusing our PostgreSQL already running on 127.0.0.1:$port ($data)"
}

_im_stop_pg_hint() {
    local data=$1
    if [[ $EUID -eq 0 ]]; then
        printf 'runuser -u postgres -- %s/pg_ctl stop -D %s -m fast' "$IM_PG_BIN_DIR" "$data"
    else
        printf '%s/pg_ctl stop -D %s -m fast' "$IM_PG_BIN_DIR" "$data"
    fi
}

_im_launch_postgres() {
    local data=$1 socket_dir=$2 port=$3 log=$4
    if _im_port_in_use "$port"; then
        _im_error "port $port on 127.0.0.1 is taken by another program: set IM_PG_PORT to a free port, or IM_LOGIC_DATABASE_URL to use that server"
        return 1
    fi

    _im_as_pg_owner tee "$data/im.conf" >/dev/null <<EOF
# Rewritten by scripts/lib/services.sh at every start.
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$socket_dir'
max_connections = 300
EOF

    _im_log "starting PostgreSQL on 127.0.0.1:$port (log: $log)"
    if ! _im_as_pg_owner "$IM_PG_BIN_DIR/pg_ctl" start -D "$data" -l "$log" -w -t 60 >/dev/null; then
        _im_error "PostgreSQL did not start within 60 s, see $log"
        _im_show_log_tail "$log"
        return 1
    fi
    _im_wait_pg_ready "$port" "$log"
}

_im_wait_pg_ready() {
    local port=$1 log=$2 attempt
    for ((attempt = 0; attempt < 100; attempt++)); do
        if "$IM_PG_BIN_DIR/pg_isready" -q -h 127.0.0.1 -p "$port" -t 1; then
            return 0
        fi
        sleep 0.2
    done
    _im_error "PostgreSQL on 127.0.0.1:$port is not ready after 20 s, see $log"
    _im_show_log_tail "$log"
    return 1
}

_im_create_pg_database() {
    local port=$1 name=$2 log=$3 exists
    local psql=("$IM_PG_BIN_DIR/psql" -q -X -tA -h 127.0.0.1 -p "$port" -U postgres -d postgres)
    if ! exists=$(PGCONNECT_TIMEOUT=5 "${psql[@]}" -c "SELECT 1 FROM pg_database WHERE datname = '$name'"); then
        _im_error "cannot query PostgreSQL on 127.0.0.1:$port, see $log"
        return 1
    fi
    if [[ $exists == 1 ]]; then
        return 0
    fi
    if ! PGCONNECT_TIMEOUT=5 "${psql[@]}" -c "CREATE DATABASE $name"; then
        _im_error "cannot create database $name on 127.0.0.1:$port, see $log"
        return 1
    fi
    _im_log "created database $name"
}

_im_stop_postgres() {
    if ! _im_as_pg_owner "$IM_PG_BIN_DIR/pg_ctl" status -D "$_IM_PG_DATA" >/dev/null 2>&1; then
        return 0
    fi
    _im_log "stopping PostgreSQL ($_IM_PG_DATA)"
    if ! _im_as_pg_owner "$IM_PG_BIN_DIR/pg_ctl" stop -D "$_IM_PG_DATA" -m fast -w -t 30 >/dev/null; then
        _im_error "PostgreSQL in $_IM_PG_DATA did not stop within 30 s"
        return 1
    fi
}

# ---------------------------------------------------------------------------------------------
# Redis

_im_check_given_redis() {
    local reply
    reply=$(timeout 10 redis-cli -u "$IM_LOGIC_REDIS_URL" --no-auth-warning ping 2>&1 || true)
    if [[ $reply != PONG ]]; then
        _im_error "Redis at IM_LOGIC_REDIS_URL does not answer PING (reply: ${reply:-none})"
        return 1
    fi
    _im_log "using the Redis given in IM_LOGIC_REDIS_URL"
}

_im_start_redis() {
    local port=${IM_REDIS_PORT:-56379}
    local dir=$IM_DATA_DIR/redis
    local log=$IM_DATA_DIR/redis.log
    _IM_REDIS_PORT=$port
    _IM_REDIS_PIDFILE=$dir/redis.pid
    mkdir -p "$dir" || return 1
    dir=$(cd "$dir" && pwd -P)

    if _im_port_in_use "$port"; then
        _im_reuse_redis "$port" "$dir" || return 1
    else
        # Set before the launch, for the same reason as _IM_PG_STARTED.
        _IM_REDIS_STARTED=1
        _im_launch_redis "$port" "$dir" "$log" || return 1
        _im_note_started redis "$(cat "$_IM_REDIS_PIDFILE" 2>/dev/null)" "$dir"
    fi
    export IM_LOGIC_REDIS_URL="redis://127.0.0.1:$port/"
}

# Reuses the Redis on PORT only when its working directory is ours, so it is our instance.
_im_reuse_redis() {
    local port=$1 dir=$2 running_dir
    running_dir=$(timeout 5 redis-cli -h 127.0.0.1 -p "$port" config get dir 2>/dev/null | sed -n 2p || true)
    if [[ $running_dir != "$dir" ]]; then
        _im_error "port $port on 127.0.0.1 is taken by another program (not our Redis in $dir): set IM_REDIS_PORT to a free port, or IM_LOGIC_REDIS_URL to use that server"
        return 1
    fi
    _im_log "reusing our Redis already running on 127.0.0.1:$port ($dir)"
}

_im_launch_redis() {
    local port=$1 dir=$2 log=$3
    _im_log "starting Redis on 127.0.0.1:$port (log: $log)"
    if ! "$IM_REDIS_SERVER_BIN" --daemonize yes --bind 127.0.0.1 --port "$port" --dir "$dir" \
        --save "" --appendonly no --protected-mode yes \
        --pidfile "$dir/redis.pid" --logfile "$log"; then
        _im_error "redis-server failed to start, see $log"
        _im_show_log_tail "$log"
        return 1
    fi

    local attempt
    for ((attempt = 0; attempt < 100; attempt++)); do
        if [[ $(timeout 2 redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null) == PONG ]]; then
            return 0
        fi
        sleep 0.1
    done
    _im_error "Redis on 127.0.0.1:$port does not answer PING after 10 s, see $log"
    _im_show_log_tail "$log"
    return 1
}

_im_stop_redis() {
    local pid=""
    if [[ -f $_IM_REDIS_PIDFILE ]]; then
        pid=$(<"$_IM_REDIS_PIDFILE")
    fi
    _im_log "stopping Redis on 127.0.0.1:$_IM_REDIS_PORT"
    timeout 10 redis-cli -h 127.0.0.1 -p "$_IM_REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true

    local attempt
    for ((attempt = 0; attempt < 100; attempt++)); do
        if [[ -z $pid ]] || ! kill -0 "$pid" 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    _im_error "Redis (pid $pid) did not stop within 10 s"
    return 1
}
