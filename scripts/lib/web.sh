# shellcheck shell=bash
# Dependencies and build of the web client in web/, for scripts/run and scripts/test.
#
#   im_web_install   npm ci in web/ when node_modules is missing or older than package-lock.json
#   im_web_build     npm run build in web/ (generates the protocol code, type-checks, writes dist/)
#                    unless dist/ is newer than every source of the build
#
# Both need node and npm on PATH and return non-zero with a message on stderr on failure. Both
# hold a lock on web/.im-build.lock while they run, so that a scripts/run and a scripts/test of
# one checkout never run npm ci or the build in web/ at once: the second waits for the first.

IM_WEB_DIR=${IM_WEB_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/web}

_im_web_log() {
    printf '[web] %s\n' "$*" >&2
}

_im_web_require_node() {
    if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
        _im_web_log "error: node and npm are needed for the web client: install Node.js 20.19 or newer"
        return 1
    fi
}

# Seconds to wait for the web lock, which another script's npm ci and build may hold for minutes
# on a fresh clone.
_IM_WEB_LOCK_TIMEOUT_S=900

# Runs COMMAND... in a subshell that holds an exclusive lock on web/.im-build.lock, waiting for
# it with a message while another script of this checkout holds it.
_im_web_locked() {
    (
        exec 8>>"$IM_WEB_DIR/.im-build.lock"
        if ! flock -n 8; then
            _im_web_log "waiting for another script of this checkout to finish its npm ci or build in web/"
            if ! flock -w "$_IM_WEB_LOCK_TIMEOUT_S" 8; then
                _im_web_log "error: web/ stayed locked for $_IM_WEB_LOCK_TIMEOUT_S s by another scripts/run or scripts/test of this checkout: wait for it or stop it"
                exit 1
            fi
        fi
        "$@"
    )
}

# Runs npm ci unless node_modules holds exactly the packages of the current package-lock.json,
# which the stamp file written after the last npm ci records.
im_web_install() {
    _im_web_require_node || return 1
    _im_web_locked _im_web_install
}

_im_web_install() {
    local stamp=$IM_WEB_DIR/node_modules/.im-lock.sha256 wanted
    wanted=$(sha256sum "$IM_WEB_DIR/package-lock.json" | cut -d ' ' -f 1)
    if [[ -f $stamp && $(<"$stamp") == "$wanted" ]]; then
        return 0
    fi
    _im_web_log "installing the web client's packages (npm ci)"
    if ! (cd "$IM_WEB_DIR" && npm ci --no-audit --no-fund); then
        _im_web_log "error: npm ci failed in $IM_WEB_DIR"
        return 1
    fi
    printf '%s\n' "$wanted" >"$stamp"
}

im_web_build() {
    _im_web_require_node || return 1
    _im_web_locked _im_web_build
}

_im_web_build() {
    if _im_web_built; then
        _im_web_log "the web client's build in dist/ is newer than its sources; not rebuilding"
        return 0
    fi
    _im_web_log "building the web client (npm run build)"
    if ! (cd "$IM_WEB_DIR" && npm run build); then
        _im_web_log "error: npm run build failed in $IM_WEB_DIR"
        return 1
    fi
}

# Succeeds when dist/index.html exists and no source of the build (the client's files, its
# package files and configuration, and the .proto files it is generated from) is newer.
# NOTE: a source file deleted since the build is not noticed; `npm run build` in web/ redoes it.
_im_web_built() {
    local built=$IM_WEB_DIR/dist/index.html
    [[ -f $built ]] || return 1
    local newer
    newer=$(find "$IM_WEB_DIR/src" "$IM_WEB_DIR/index.html" "$IM_WEB_DIR/package.json" \
        "$IM_WEB_DIR/package-lock.json" "$IM_WEB_DIR/vite.config.ts" "$IM_WEB_DIR/tsconfig.json" \
        "$IM_WEB_DIR/buf.gen.yaml" "$IM_WEB_DIR/../proto" \
        -path "$IM_WEB_DIR/src/gen" -prune -o -type f -newer "$built" -print -quit 2>/dev/null)
    [[ -z $newer ]]
}
