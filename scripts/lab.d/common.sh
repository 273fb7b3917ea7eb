# shellcheck shell=bash
# scripts/lab, what every part of the lab uses: retries, the lab directory
# argument, lab.env, free loopback ports.
#
# Sourced by scripts/lab (never run by itself), which defines the constants
# (CLIENT_BIN, MARKER, LOCK_FILE, ...), log, die and usage_error.

# Run a command up to N times, 0.5 s apart: zfs-fuse answers "dataset is busy"
# for a moment after a process that used a mount has exited.
retry() {
    local tries=$1 i
    shift
    for ((i = 1; i <= tries; i++)); do
        if "$@" 2>/dev/null; then return 0; fi
        sleep 0.5
    done
    "$@" # last attempt, with its error message visible
}

# Redirections go on external commands, never on shell functions: bash applies
# a function's redirections in this shell, so a trap firing meanwhile (Ctrl-C
# during initdb) would send the cleanup messages into the redirected file.

# Absolute path without resolving symlinks, so LAB_DIR is the path the caller
# gave.  Only plain characters are accepted: the path ends up unquoted in
# lab.env and inside TOML and SQL strings.
lab_dir_arg() {
    local dir=$1
    # Relative to where the caller was, not to / (see the cd above).
    [[ $dir == /* ]] || dir=$CALLER_PWD/$dir
    dir=$(realpath -m -s -- "$dir")
    [[ $dir =~ ^/[A-Za-z0-9._/-]+$ && $dir != / ]] ||
        usage_error "DIR must be a path of letters, digits, '.', '_', '-' and '/': $1"
    printf '%s\n' "$dir"
}

# Read lab.env into LAB_* shell variables without executing it.
declare -A ENV=()
load_env() {
    local file=$1/lab.env key value
    ENV=()
    [[ -f $file ]] || return 1
    while IFS='=' read -r key value; do
        [[ $key =~ ^[A-Z0-9_]+$ ]] && ENV[$key]=$value
    done <"$file"
    return 0
}

# Three free loopback ports, held at once while choosing so they differ.
pick_ports() {
    if command -v python3 >/dev/null 2>&1; then
        python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
        return
    fi
    # Without python: random ports below Linux's ephemeral range, skipping any
    # that something uses (listening or connected).
    local -a got=()
    local p
    while ((${#got[@]} < $1)); do
        p=$((20000 + RANDOM % 12000))
        [[ " ${got[*]} " == *" $p "* ]] && continue
        [[ -n $(ss -Hant "( sport = :$p )" 2>/dev/null) ]] && continue
        got+=("$p")
    done
    echo "${got[*]}"
}
