# shellcheck shell=bash
# scripts/lab, a lab's life: `scripts/lab up` (loopback; hosts mode is in
# hosts.sh), its pgzfs.toml and lab.env, `check`, and `down` (finding and
# stopping the lab's processes, teardown).
#
# Sourced by scripts/lab (never run by itself), which defines the constants
# (CLIENT_BIN, MARKER, LOCK_FILE, ...), log, die and usage_error.

# PIDs of processes that belong to the lab: working directory inside DIR, or an
# argument that names DIR or a path below it.  Our own process and its
# ancestors (the test harness that called us) are never candidates, and
# neither is zfs-fuse, which serves every lab on the machine.
lab_pids() {
    local dir=$1 pid p cwd comm arg
    local re_dir=${dir//./\\.}
    local re="(^|[[:space:]=:'\"])${re_dir}(/|$|[[:space:]'\"])"
    # $BASHPID differs from $$ when this runs in a subshell (the cleanup after
    # a failed up does), and both carry our own command line, which names DIR.
    local -A skip=([0]=1 [1]=1)
    read_parents
    for p in $$ $BASHPID; do
        while [[ -n $p && $p -gt 1 && -z ${skip[$p]:-} ]]; do
            skip[$p]=1
            p=${PARENT[$p]:-}
        done
    done
    LAB_PIDS=()
    for pid in "${!PARENT[@]}"; do
        [[ -n ${skip[$pid]:-} ]] && continue
        comm=$(cat "/proc/$pid/comm" 2>/dev/null) || continue
        [[ $comm == zfs-fuse ]] && continue
        cwd=$(readlink "/proc/$pid/cwd" 2>/dev/null || true)
        if [[ $cwd == "$dir" || $cwd == "$dir"/* ]]; then
            LAB_PIDS+=("$pid")
            continue
        fi
        local -a args=()
        mapfile -d '' -t args 2>/dev/null <"/proc/$pid/cmdline" || continue
        for arg in "${args[@]}"; do
            if [[ $arg =~ $re ]]; then
                LAB_PIDS+=("$pid")
                break
            fi
        done
    done
}

# PARENT[pid]=ppid for every process, read from /proc with builtins only (no
# dependency on procps; processes may vanish while we read).
declare -A PARENT=()
read_parents() {
    local f pid key value
    PARENT=()
    for f in /proc/[0-9]*/status; do
        pid=${f#/proc/}
        pid=${pid%/status}
        while read -r key value; do
            if [[ $key == PPid: ]]; then
                PARENT[$pid]=$value
                break
            fi
        done 2>/dev/null <"$f" || true
    done
}

# All descendants of a PID: sshd's per-connection children and whatever they
# run (a zfs receive into the lab pool, say, whose arguments do not name DIR).
descendants() {
    local root=$1 pid changed=1
    local -A tree=([$root]=1)
    read_parents
    while ((changed)); do
        changed=0
        for pid in "${!PARENT[@]}"; do
            if [[ -z ${tree[$pid]:-} && -n ${tree[${PARENT[$pid]}]:-} ]]; then
                tree[$pid]=1
                changed=1
            fi
        done
    done
    unset "tree[$root]"
    for pid in "${!tree[@]}"; do printf '%s\n' "$pid"; done
}

# kill_and_wait WHAT PID...: TERM, up to 5 s of grace, then KILL.
kill_and_wait() {
    local what=$1
    shift
    (($#)) || return 0
    log "stopping $what: $*"
    kill -TERM "$@" 2>/dev/null || true
    local i pid
    local -a alive=()
    for ((i = 0; i < 20; i++)); do
        alive=()
        for pid in "$@"; do
            [[ -e /proc/$pid ]] && alive+=("$pid")
        done
        ((${#alive[@]})) || return 0
        sleep 0.25
    done
    kill -KILL "${alive[@]}" 2>/dev/null || true
}

mounts_below() {
    awk -v d="$1" '$2 == d || index($2, d "/") == 1 {print $2}' /proc/self/mounts
}

# stop_pidfile WHAT PIDFILE WANT: stop the process a pidfile names, and its
# descendants, but only if its command line still contains WANT (PIDs get
# reused, and a stale pidfile must never make us kill a stranger).
stop_pidfile() {
    local what=$1 pidfile=$2 want=$3 pid cmdline=""
    [[ -f $pidfile ]] || return 0
    pid=$(head -n1 "$pidfile")
    [[ $pid =~ ^[0-9]+$ ]] || return 0
    cmdline=$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" || true)
    [[ $cmdline == *"$want"* ]] || return 0
    local -a tree=()
    mapfile -t tree < <(descendants "$pid")
    kill_and_wait "$what" "$pid" "${tree[@]}"
}

# Tear a lab down, as far as it got.  Safe to repeat: every step checks first.
teardown() {
    local dir=$1 name="" pg_bin=$CLIENT_BIN
    if [[ ! -e $dir ]]; then
        log "$dir does not exist; nothing to do"
        return 0
    fi
    if [[ ! -f $dir/$MARKER ]]; then
        # Never kill, destroy or delete on behalf of a directory we did not make.
        if [[ -d $dir && -z $(ls -A "$dir") ]]; then
            rmdir "$dir"
            return 0
        fi
        die "$dir is not a lab (no $MARKER); refusing to touch it"
    fi
    name=$(head -n1 "$dir/$MARKER")
    if load_env "$dir" && [[ -n ${ENV[PG_BIN]:-} && -x ${ENV[PG_BIN]}/pg_ctl ]]; then
        pg_bin=${ENV[PG_BIN]}
    fi

    # 0. CARP first, so that no node promotes or fences itself because its
    #    peers are going away.  The marker makes the hooks skip pgzfs; ucarp
    #    still runs its down script on TERM (--shutdown), which only drops the
    #    VIP then.
    local f
    if [[ -d $dir/carp ]]; then
        : >"$dir/carp/hooks-off"
        for f in "$dir"/carp/db*.pid; do
            [[ -f $f ]] || continue
            stop_pidfile "ucarp $(basename "$f" .pid)" "$f" "--upscript=$dir/carp/up.sh"
        done
    fi
    stop_pidfile pgbouncer "$dir/pgbouncer/pgbouncer.pid" "$dir/pgbouncer/pgbouncer.ini"

    # 1. PostgreSQL: immediate stop is enough for a lab and never hangs on
    #    clients.  pg_ctl stop only signals the PID in postmaster.pid, so any
    #    major's pg_ctl can do it, from any network namespace.
    local data
    for data in "$dir"/db*/data; do
        if [[ -f $data/postmaster.pid ]]; then
            log "stopping PostgreSQL in $data"
            timeout 60 runuser -u postgres -- "$pg_bin/pg_ctl" stop -D "$data" -m immediate -w -t 30 \
                </dev/null >/dev/null 2>&1 || true
        fi
    done

    # 2. sshd (one in loopback mode, one per node in hosts mode), with its
    #    session children.
    for f in "$dir"/ssh/sshd.pid "$dir"/ssh-db*/sshd.pid; do
        [[ -f $f ]] || continue
        stop_pidfile "sshd $(dirname "$f") and its sessions" "$f" "$(dirname "$f")/sshd_config"
    done

    # 3. Anything else still running in or on the lab directory.
    local -a LAB_PIDS=()
    lab_pids "$dir"
    kill_and_wait "leftover processes" "${LAB_PIDS[@]}"

    # 3b. The namespaces this lab created (listed in DIR/netns before each was
    #     made).  Whatever still runs inside them is the lab's by definition;
    #     deleting a namespace takes its veths and the bridge with it.
    local ns
    if [[ -f $dir/netns ]]; then
        while read -r ns; do
            [[ -n $ns && -e $NETNS_DIR/$ns ]] || continue
            local -a inside=()
            mapfile -t inside < <(ip netns pids "$ns" 2>/dev/null || true)
            kill_and_wait "processes in namespace $ns" "${inside[@]}"
            log "deleting network namespace $ns"
            ip netns delete "$ns" || log "warning: could not delete namespace $ns"
        done <"$dir/netns"
    fi

    # 4. The pool.  Needs the daemon; start it if the machine lost it.  Only
    #    pools that really live on DIR/pool.img are destroyed: the name in the
    #    marker alone could by now belong to someone else's pool.
    if [[ -f $dir/pool.img ]]; then
        zfs_lock
        ensure_zfs_fuse
        local -a pools=()
        mapfile -t pools < <(pools_backed_by "$dir")
        local pool
        for pool in "${pools[@]}"; do
            [[ -n $pool ]] || continue
            log "destroying pool $pool"
            destroy_pool "$pool"
        done
        if [[ -n $name ]] && pool_exists "$name" && [[ " ${pools[*]} " != *" $name "* ]]; then
            log "note: a pool named $name exists but is not on $dir/pool.img; left alone"
        fi
        zfs_unlock
    fi

    # 5. Nothing may stay mounted below DIR: rm must not walk into a mount.
    local m
    for m in $(mounts_below "$dir" | sort -r); do
        retry 10 umount "$m" || umount -l "$m" || die "could not unmount $m"
    done

    rm -rf --one-file-system -- "$dir"
    log "removed $dir"
}

cmd_down() {
    [[ $# -eq 1 ]] || usage_error "down takes exactly one argument, DIR"
    local dir
    dir=$(lab_dir_arg "$1")
    teardown "$dir"
}

# The postgres user must be able to walk down to DIR (its data dir, sockets and
# logs are below it); a parent like /root (0700) would stop it.
ensure_traversable() {
    local p=$1
    while [[ $p != / ]]; do
        p=$(dirname "$p")
        if ! runuser -u postgres -- test -x "$p"; then
            log "note: chmod o+x $p so that the postgres user can reach the lab"
            chmod o+x "$p"
        fi
    done
}

UP_DIR=""
UP_DONE=0
# The zfs-fuse daemon this set-up started with, and which attempt this is: a
# set-up during which the daemon was restarted (it died or hung) is torn down
# and run once more, by a second scripts/lab with LAB_UP_ATTEMPT=2.
UP_ZFS_PID=""
UP_ARGS=()
UP_ATTEMPT=${LAB_UP_ATTEMPT:-1}
unset LAB_UP_ATTEMPT
on_up_exit() {
    local rc=$?
    set +e
    if [[ $UP_DONE -eq 0 && -n $UP_DIR ]]; then
        log "up failed (exit $rc)"
        local f
        for f in "$UP_DIR"/db1.log "$UP_DIR"/initdb.log "$UP_DIR"/ssh/sshd.log "$UP_DIR"/ssh-db*/sshd.log \
            "$UP_DIR"/carp/db*.log "$UP_DIR"/pgbouncer/pgbouncer.log; do
            if [[ -s $f ]]; then
                log "--- last lines of $f"
                tail -n 20 "$f" >&2
            fi
        done
        # Was zfs-fuse the cause?  One that stopped answering is restarted
        # here (which teardown needs anyway), under the lock, in a subshell so
        # that a failure there still lets the rest of this run.
        (
            zfs_lock
            if ! zfs_fuse_answers; then
                restart_zfs_fuse "$ZFS_FUSE_WHY, after $UP_DIR failed to come up"
            fi
        )
        local now_pid restarted=0 cleaned=0
        now_pid=$(zfs_fuse_pids | head -n1)
        if [[ $now_pid != "$UP_ZFS_PID" ]]; then
            restarted=1
            log "zfs-fuse was restarted during this set-up (pid ${UP_ZFS_PID:-none} then, ${now_pid:-none} now)"
        fi
        zfs_fuse_state
        if [[ -n ${LAB_KEEP_ON_FAILURE:-} ]]; then
            log "LAB_KEEP_ON_FAILURE is set: leaving $UP_DIR; remove it with: scripts/lab down $UP_DIR"
        else
            log "cleaning up the half-built lab"
            if (teardown "$UP_DIR"); then
                cleaned=1
            else
                log "cleanup failed; run: scripts/lab down $UP_DIR"
            fi
        fi
        if ((restarted && cleaned && rc < 128 && UP_ATTEMPT == 1)); then
            log "RETRY: setting $UP_DIR up once more on the new zfs-fuse (pid $now_pid)"
            zfs_fuse_note "RETRY: set-up of $UP_DIR, once more after zfs-fuse was restarted"
            exec 9>&-
            cd "$CALLER_PWD" || exit "$rc"
            export LAB_UP_ATTEMPT=2
            exec "$SELF" up "${UP_ARGS[@]}"
        fi
        if ((UP_ATTEMPT > 1)); then
            log "this was the second attempt, after zfs-fuse had been restarted once; giving up"
        fi
    fi
    exit "$rc"
}

# toml_head NAME DIR PG_BIN SSH_PORT: the pgzfs.toml lines before the nodes.
toml_head() {
    cat <<EOF
# pgzfs lab config, written by scripts/lab up.
cluster = "$1"
log_file = "$2/pgzfs.log"

[defaults]
pg_bin = "$3"
pg_os_user = "postgres"
pg_user = "replicator"
pg_database = "postgres"
pg_passfile = "$2/pgpass"
ssh_user = "root"
ssh_port = $4
ssh_key = "$2/ssh/id_ed25519"
known_hosts = "$2/ssh/known_hosts"
streaming_timeout = "90s"
lock_timeout = "20s"
EOF
}

# toml_node DIR NAME NODE HOST PORT SOCK [LISTEN [REPLICATION_HOST]]: one
# [[nodes]] entry.
# pg_settings are what pgzfs writes on top of the postgresql.conf a re-seed
# clones from another node, so everything node-specific goes there.
toml_node() {
    local dir=$1 name=$2 node=$3 host=$4 port=$5 sock=$6 listen=${7:-} replication_host=${8:-}
    cat <<EOF

[[nodes]]
name = "$node"
host = "$host"
EOF
    if [[ -n $replication_host ]]; then
        echo "replication_host = \"$replication_host\""
    fi
    cat <<EOF
dataset = "$name/$node"
data_dir = "$dir/$node/data"
mountpoint = "$dir/$node"
pg_port = $port
lock_file = "$dir/$node.lock"
pg_log_file = "$dir/$node.log"
[nodes.pg_settings]
unix_socket_directories = "$sock"
EOF
    if [[ -n $listen ]]; then
        echo "listen_addresses = \"$listen\""
    fi
}

# Last, and atomically: a complete lab.env means a complete lab.  Lines come
# from stdin.
write_env() {
    cat >"$1/lab.env.tmp"
    mv "$1/lab.env.tmp" "$1/lab.env"
}

cmd_up() {
    local dir="" name="" major=15 scale=1 hosts=0 carp=0 pgbouncer=0 replnet=0 pgzfs_bin=""
    UP_ARGS=("$@")
    while (($#)); do
        case $1 in
            --name) name=${2:?--name needs a value}; shift 2 ;;
            --name=*) name=${1#*=}; shift ;;
            --pg-major) major=${2:?--pg-major needs a value}; shift 2 ;;
            --pg-major=*) major=${1#*=}; shift ;;
            --scale) scale=${2:?--scale needs a value}; shift 2 ;;
            --scale=*) scale=${1#*=}; shift ;;
            --pool-size) POOL_SIZE=${2:?--pool-size needs a value}; shift 2 ;;
            --pool-size=*) POOL_SIZE=${1#*=}; shift ;;
            --hosts) hosts=${2:?--hosts needs a value}; shift 2 ;;
            --hosts=*) hosts=${1#*=}; shift ;;
            --carp) carp=1; shift ;;
            --pgbouncer) pgbouncer=1; shift ;;
            --replication-net) replnet=1; shift ;;
            --pgzfs-bin) pgzfs_bin=${2:?--pgzfs-bin needs a value}; shift 2 ;;
            --pgzfs-bin=*) pgzfs_bin=${1#*=}; shift ;;
            -*) usage_error "unknown option $1" ;;
            *)
                [[ -z $dir ]] || usage_error "unexpected argument $1"
                dir=$1
                shift
                ;;
        esac
    done
    [[ -n $dir ]] || usage_error "up needs DIR"
    dir=$(lab_dir_arg "$dir")
    [[ $major =~ ^[0-9]+$ ]] || usage_error "--pg-major must be a number"
    [[ $scale =~ ^[1-9][0-9]*$ ]] || usage_error "--scale must be a positive integer"
    [[ $POOL_SIZE =~ ^[1-9][0-9]*[KMGT]?$ ]] || usage_error "--pool-size must look like 4G or 12G"
    [[ $hosts == 0 || $hosts == 2 || $hosts == 3 ]] || usage_error "--hosts must be 2 or 3"
    if ((hosts == 0)) && [[ $carp == 1 || $pgbouncer == 1 || $replnet == 1 || -n $pgzfs_bin ]]; then
        usage_error "--carp, --pgbouncer, --replication-net and --pgzfs-bin need --hosts"
    fi
    if [[ -z $name ]]; then
        name=$(pool_name_from "$(basename "$dir")")
    fi
    valid_pool_name "$name" ||
        usage_error "invalid pool name '$name': letters, digits, '_', '-', starting with a letter"
    if ((hosts)); then
        # The hooks run it from inside the namespaces; the default is the
        # repository's debug build.
        [[ -n $pgzfs_bin ]] || pgzfs_bin=$SCRIPTS_DIR/../target/debug/pgzfs
        [[ $pgzfs_bin == /* ]] || pgzfs_bin=$CALLER_PWD/$pgzfs_bin
        pgzfs_bin=$(realpath -m -- "$pgzfs_bin")
        [[ $pgzfs_bin =~ ^/[A-Za-z0-9._/-]+$ ]] ||
            usage_error "--pgzfs-bin must be a path of letters, digits, '.', '_', '-' and '/'"
    fi

    [[ $(id -u) -eq 0 ]] || die "must run as root"
    id postgres >/dev/null 2>&1 || die "no postgres OS user; run scripts/install-deps"
    local pg_bin
    pg_bin=$("$SCRIPTS_DIR/pg-bin" "$major") || exit 1
    [[ -x $CLIENT_BIN/psql && -x $CLIENT_BIN/pgbench ]] ||
        die "psql/pgbench missing in $CLIENT_BIN; run scripts/install-deps"
    [[ -x /usr/sbin/sshd ]] || die "/usr/sbin/sshd missing; run scripts/install-deps"
    if ((hosts)); then
        local tool
        for tool in ip nsenter; do
            command -v "$tool" >/dev/null 2>&1 || die "$tool missing; run scripts/install-deps"
        done
        if ((carp)); then
            command -v ucarp >/dev/null 2>&1 || die "ucarp missing; run scripts/install-deps"
        fi
        if ((pgbouncer)); then
            command -v pgbouncer >/dev/null 2>&1 || die "pgbouncer missing; run scripts/install-deps"
        fi
        [[ -x $pgzfs_bin ]] || log "note: $pgzfs_bin does not exist (yet); the CARP hooks will log failures until it does"
    fi

    # Refuse before touching anything, so that a clash never triggers the
    # cleanup below against somebody else's lab.
    if [[ -e $dir ]] && [[ ! -d $dir || -n $(ls -A "$dir") ]]; then
        die "$dir already exists and is not empty (an old lab? scripts/lab down $dir)"
    fi
    ensure_zfs_fuse
    UP_ZFS_PID=$(zfs_fuse_pids | head -n1)
    pool_exists "$name" && die "a pool named $name already exists (another lab?)"
    if ((hosts)); then
        local ns
        for ns in "$name-sw" "$name-client" $(seq -f "$name-db%g" 1 "$hosts"); do
            [[ ! -e $NETNS_DIR/$ns ]] || die "network namespace $ns already exists (another lab?)"
        done
    fi

    UP_DIR=$dir
    trap on_up_exit EXIT
    # Signals end up in the EXIT trap too (bash does not run it on its own for
    # a signal death).
    trap 'exit 129' HUP
    trap 'exit 130' INT
    trap 'exit 141' PIPE
    trap 'exit 143' TERM

    mkdir -p "$dir"
    chmod 0755 "$dir"
    echo "$name" >"$dir/$MARKER"
    ensure_traversable "$dir"

    if ((hosts)); then
        up_hosts "$dir" "$name" "$major" "$scale" "$pg_bin" "$hosts" "$carp" "$pgbouncer" "$pgzfs_bin" "$replnet"
    else
        up_loopback "$dir" "$name" "$major" "$scale" "$pg_bin"
    fi
    UP_DONE=1
    trap - EXIT HUP INT PIPE TERM
}

up_loopback() {
    local dir=$1 name=$2 major=$3 scale=$4 pg_bin=$5
    local ports
    ports=$(pick_ports 3)
    local SSH_PORT DB1_PORT DB2_PORT
    read -r SSH_PORT DB1_PORT DB2_PORT <<<"$ports"
    local SOCK_DIR=$dir/sock SOCK2_DIR=$dir/sock2
    local db1_data=$dir/db1/data db2_data=$dir/db2/data

    create_pool "$name" "$dir"
    install -d -o postgres -g postgres -m 0755 "$SOCK_DIR" "$SOCK2_DIR"
    # pg_ctl -l opens the log as postgres, which cannot create files in DIR.
    install -o postgres -g postgres -m 0640 /dev/null "$dir/db1.log"
    install -o postgres -g postgres -m 0640 /dev/null "$dir/db2.log"

    log "sshd on 127.0.0.1:$SSH_PORT"
    make_client_key "$dir/ssh"
    prepare_sshd "$dir/ssh" 127.0.0.1 "$SSH_PORT" "$dir/ssh/authorized_keys" loopback
    start_sshd "$dir/ssh"
    # OpenSSH and libssh2 both look up "[host]:port" for a port other than 22.
    printf '[127.0.0.1]:%s %s\n' "$SSH_PORT" "$(host_key "$dir/ssh")" >"$dir/ssh/known_hosts"
    chmod 0644 "$dir/ssh/known_hosts"
    wait_ssh "$dir" 127.0.0.1 "$SSH_PORT"

    log "PostgreSQL $major primary db1 on 127.0.0.1:$DB1_PORT ($pg_bin)"
    init_primary "$dir" "$pg_bin" 127.0.0.1 "" 127.0.0.1/32
    local version_num password
    version_num=$(check_primary_version "$major")
    password=$(random_secret)
    create_roles "$version_num" "$password"
    printf '127.0.0.1:*:*:replicator:%s\n*:*:replication:replicator:%s\n' "$password" "$password" |
        write_pgpass "$dir/pgpass"
    seed "$dir" "$scale"

    {
        toml_head "$name" "$dir" "$pg_bin" "$SSH_PORT"
        toml_node "$dir" "$name" db1 127.0.0.1 "$DB1_PORT" "$SOCK_DIR"
        toml_node "$dir" "$name" db2 127.0.0.1 "$DB2_PORT" "$SOCK2_DIR"
    } >"$dir/pgzfs.toml"

    write_env "$dir" <<EOF
LAB_DIR=$dir
LAB_NAME=$name
POOL=$name
SSH_PORT=$SSH_PORT
PG_MAJOR=$major
PG_BIN=$pg_bin
DB1_PORT=$DB1_PORT
DB2_PORT=$DB2_PORT
DB1_DATA=$db1_data
DB2_DATA=$db2_data
DB1_DATASET=$name/db1
DB2_DATASET=$name/db2
CONFIG=$dir/pgzfs.toml
PGPASSFILE=$dir/pgpass
SOCK_DIR=$SOCK_DIR
SOCK2_DIR=$SOCK2_DIR
CLIENT_BIN=$CLIENT_BIN
SSH_KEY=$dir/ssh/id_ed25519
KNOWN_HOSTS=$dir/ssh/known_hosts
EOF

    # The one check a caller relies on most: the replication role can log in
    # over TCP with nothing but the pgpass file.
    local rec
    rec=$(PGPASSFILE=$dir/pgpass "$CLIENT_BIN/psql" -X -w -At -h 127.0.0.1 -p "$DB1_PORT" \
        -U replicator -d postgres -c 'select pg_is_in_recovery()') ||
        die "replicator cannot log in to db1 with $dir/pgpass"
    [[ $rec == f ]] || die "db1 unexpectedly reports pg_is_in_recovery() = $rec"

    cat <<EOF
lab up: $dir (pool $name, PostgreSQL $major)
  ssh     root@127.0.0.1:$SSH_PORT
  db1     127.0.0.1:$DB1_PORT  $db1_data (primary, running)
  db2     127.0.0.1:$DB2_PORT  $db2_data (not created yet)
  config  $dir/pgzfs.toml
  env     $dir/lab.env
  down    $SCRIPTS_DIR/lab down $dir
EOF
}

# Prove the lab does what pgzfs needs, as pgzfs would do it (replicator over
# TCP with only the pgpass; ssh with strict host keys).  In hosts mode the
# probes run from db2's namespace, as pgzfs on a standby would.
cmd_check() {
    [[ $# -eq 1 ]] || usage_error "check takes DIR"
    local dir
    dir=$(lab_dir_arg "$1")
    load_env "$dir" || die "no lab at $dir (lab.env missing)"
    local port=${ENV[DB1_PORT]} host=127.0.0.1 rc=0 v
    ns_prefix ""
    if [[ -n ${ENV[HOSTS]:-} ]]; then
        host=${ENV[DB1_ADDR]}
        ns_prefix "${ENV[DB2_NS]}"
    fi
    rpsql() {
        PGPASSFILE=${ENV[PGPASSFILE]} "${NS_RUN[@]}" "$CLIENT_BIN/psql" -X -w -At -v ON_ERROR_STOP=1 \
            -h "$host" -p "$port" -U replicator -d postgres "$@"
    }
    v=$(rpsql -c 'show server_version_num') || die "replicator cannot log in to db1"
    echo "ok   replicator logs in to db1 at $host (server_version_num $v)"
    if [[ $(rpsql -c 'select pg_is_in_recovery()') == f ]]; then
        echo "ok   db1 is a primary"
    else
        echo "FAIL db1 is in recovery"
        rc=1
    fi
    local start stop
    if ((v >= 150000)); then
        start="select pg_backup_start('pgzfs-lab-check', true)"
        stop="select lsn from pg_backup_stop(false)"
    else
        start="select pg_start_backup('pgzfs-lab-check', true, false)"
        stop="select lsn from pg_stop_backup(false, false)"
    fi
    # Same session for start and stop: non-exclusive backups end with it.
    if rpsql -c "$start" -c "$stop" >/dev/null; then
        echo "ok   backup start/stop as replicator"
    else
        echo "FAIL backup start/stop as replicator"
        rc=1
    fi
    if rpsql -c "select pg_create_physical_replication_slot('pgzfs_lab_check')" \
        -c "select pg_drop_replication_slot('pgzfs_lab_check')" >/dev/null; then
        echo "ok   create/drop a physical slot as replicator"
    else
        echo "FAIL create/drop a physical slot as replicator"
        rc=1
    fi
    if ((v >= 120000)); then
        if [[ $(rpsql -c "select has_function_privilege('pg_promote(boolean,integer)', 'execute')") == t ]]; then
            echo "ok   replicator may call pg_promote"
        else
            echo "FAIL replicator may not call pg_promote"
            rc=1
        fi
    fi
    if [[ $(rpsql -c "select pg_try_advisory_lock(4242)") == t ]]; then
        echo "ok   advisory lock as replicator"
    else
        echo "FAIL advisory lock as replicator"
        rc=1
    fi
    if [[ -n ${ENV[HOSTS]:-} ]]; then
        local k from
        for ((k = 1; k <= ENV[HOSTS]; k++)); do
            from=${ENV[DB2_NS]}
            ((k == 2)) && from=${ENV[DB1_NS]}
            local ssh_addr=${ENV[DB${k}_REPL_ADDR]:-${ENV[DB${k}_ADDR]}}
            if ssh_probe "$dir" "$ssh_addr" "${ENV[SSH_PORT]}" loud "$from"; then
                echo "ok   ssh root@$ssh_addr from $from with strict host key checking"
            else
                echo "FAIL ssh root@$ssh_addr from $from"
                rc=1
            fi
        done
    elif ssh_check "$dir" "${ENV[SSH_PORT]}"; then
        echo "ok   ssh root@127.0.0.1:${ENV[SSH_PORT]} with strict host key checking"
    else
        echo "FAIL ssh"
        rc=1
    fi
    if [[ $(zfs get -H -o value mounted "${ENV[DB1_DATASET]}" 2>/dev/null) == yes ]]; then
        echo "ok   ${ENV[DB1_DATASET]} mounted"
    else
        echo "FAIL ${ENV[DB1_DATASET]} not mounted"
        rc=1
    fi
    if [[ -n ${ENV[VIP]:-} ]]; then
        local holders="" k
        for ((k = 1; k <= ENV[HOSTS]; k++)); do
            if has_vip "${ENV[DB${k}_NS]}" "${ENV[VIP]}"; then holders+=" db$k"; fi
        done
        if [[ $holders == " "db? ]]; then
            echo "ok   VIP ${ENV[VIP]} held by${holders}"
        else
            echo "FAIL VIP ${ENV[VIP]} held by:${holders:- nobody}"
            rc=1
        fi
    fi
    if [[ -n ${ENV[PGBOUNCER_PORT]:-} ]]; then
        if v=$(PGPASSFILE=${ENV[PGPASSFILE]} nsenter "--net=$NETNS_DIR/${ENV[CLIENT_NS]}" -- \
            "$CLIENT_BIN/psql" -X -w -At -h "${ENV[CLIENT_ADDR]}" -p "${ENV[PGBOUNCER_PORT]}" -U app -d postgres \
            -c 'select inet_server_addr()'); then
            echo "ok   pgbouncer at ${ENV[CLIENT_ADDR]}:${ENV[PGBOUNCER_PORT]} reaches $v"
        else
            echo "FAIL pgbouncer"
            rc=1
        fi
    fi
    return "$rc"
}
