# shellcheck shell=bash
# scripts/lab, pools and the zfs-fuse daemon: one daemon serves every lab on
# the machine.
#
# Sourced by scripts/lab (never run by itself), which defines the constants
# (CLIENT_BIN, MARKER, LOCK_FILE, ...), log, die and usage_error.

#
# zfs-fuse 0.7 does not survive everything at once: two labs creating their
# pools at the same moment killed it (`zfsfuse_ioctl_read_loop(): file
# descriptor closed`, then "Input/output error" on the new mounts, FAULTED
# pools and "connection refused" for everyone after).  So:
# - what it cannot take at once (starting it, pool create/import/export/
#   destroy and a pool's first mounts) runs under LOCK_FILE, one lock shared by
#   every lab on the machine (older scripts/lab take the same file to start
#   the daemon);
# - before a lab starts, and after a set-up fails, the daemon must answer a
#   real request (`zpool list`), not merely have a socket; one that died or
#   hangs is killed, what it left is cleaned up, and a new one is started;
# - a set-up that failed while the daemon went away is torn down and run once
#   more, and says so; a second failure prints the daemon's state.

# Seconds one `zpool list` may take, three tries, before the daemon counts as
# hung.  Generous: killing a daemon that is merely busy breaks every lab on
# the machine.  (LAB_ZFS_PROBE_TIMEOUT shortens it for the recovery check.)
ZFS_PROBE_TIMEOUT=${LAB_ZFS_PROBE_TIMEOUT:-20}
# A bad value would make every probe fail, and the daemon be killed.
[[ $ZFS_PROBE_TIMEOUT =~ ^[1-9][0-9]{0,3}$ ]] || ZFS_PROBE_TIMEOUT=20
# Seconds to wait for the lock: a holder may be restarting a hung daemon.
ZFS_LOCK_WAIT=600
# Seconds one pool or dataset command may take while the lock is held, so
# that a daemon that hangs mid-way cannot keep every other lab waiting.
ZFS_CMD_TIMEOUT=120
# The daemon's own messages (the machine may have no syslog).
ZFS_FUSE_LOG=/var/log/pgzfs-zfs-fuse.log

ZFS_LOCK_DEPTH=0
# zfs_lock / zfs_unlock: hold LOCK_FILE (fd 9); nested calls only count.
# Nothing long-lived may start while it is held (it would inherit fd 9).
zfs_lock() {
    if ((ZFS_LOCK_DEPTH > 0)); then
        ZFS_LOCK_DEPTH=$((ZFS_LOCK_DEPTH + 1))
        return 0
    fi
    exec 9>"$LOCK_FILE"
    if ! flock -w "$ZFS_LOCK_WAIT" 9; then
        exec 9>&-
        die "waited ${ZFS_LOCK_WAIT}s for $LOCK_FILE; processes with a lock on it (pid command): $(lslocks -n -o PID,COMMAND,PATH 2>/dev/null |
            awk -v f="$LOCK_FILE" '$3 == f {print $1, $2}' | paste -sd ';')"
    fi
    ZFS_LOCK_DEPTH=1
}

zfs_unlock() {
    ((ZFS_LOCK_DEPTH > 0)) || return 0
    ZFS_LOCK_DEPTH=$((ZFS_LOCK_DEPTH - 1))
    if ((ZFS_LOCK_DEPTH == 0)); then exec 9>&-; fi
}

# zfs_run CMD...: a zpool/zfs command that gives up after ZFS_CMD_TIMEOUT.
zfs_run() { timeout -k 5 "$ZFS_CMD_TIMEOUT" "$@"; }

# One-letter state of a process (R, S, D, T, Z...), empty if it is gone.
proc_state() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
    stat=${stat##*) }
    printf '%s\n' "${stat%% *}"
}

# gone PID: nothing of the process is left but (at most) a zombie leader.  A
# killed multi-threaded process shows its leader as a zombie while its other
# threads still exit, holding the daemon's files (/var/lock/zfs/zfs_lock, the
# FUSE device); a new daemon started then exits at once.
gone() {
    local t state
    for t in /proc/"$1"/task/*; do
        [[ -e $t ]] || continue
        state=$(proc_state "$1/task/${t##*/}")
        [[ -z $state || $state == [ZX] ]] || return 1
    done
    return 0
}

# PIDs of zfs-fuse processes that still exist.  Not zombies: a killed daemon
# stays one until whoever inherited it reaps it, which may take a while.
zfs_fuse_pids() {
    local pid state
    for pid in $(pgrep -x zfs-fuse || true); do
        state=$(proc_state "$pid")
        [[ -n $state && $state != [ZX] ]] && printf '%s\n' "$pid"
    done
    return 0
}

# zfs_fuse_answers: a daemon runs and answers `zpool list` in time.  A stopped
# one (SIGSTOP, state T) cannot; connection refused fails at once.  Says why
# not in ZFS_FUSE_WHY.
ZFS_FUSE_WHY=""
zfs_fuse_answers() {
    local pid state try
    for ((try = 1; try <= 3; try++)); do
        pid=$(zfs_fuse_pids | head -n1)
        ZFS_FUSE_WHY="is not running"
        [[ -n $pid ]] || return 1
        state=$(proc_state "$pid")
        ZFS_FUSE_WHY="(pid $pid) is stopped (state $state)"
        [[ $state == [Tt] ]] && return 1
        if timeout -k 5 "$ZFS_PROBE_TIMEOUT" zpool list -H -o name >/dev/null 2>&1; then
            ZFS_FUSE_WHY=""
            return 0
        fi
        ZFS_FUSE_WHY="(pid $pid) did not answer \`zpool list\` within ${ZFS_PROBE_TIMEOUT}s, three tries"
        sleep 1
    done
    return 1
}

# What an operator needs to see when zfs-fuse is in doubt: the process, its
# pools, whoever is stuck on it, and the last lines of its log.
zfs_fuse_state() {
    local pid out
    log "--- zfs-fuse state ($(date -u +%FT%TZ))"
    for pid in $(zfs_fuse_pids); do
        log "process $pid, state $(proc_state "$pid"), running $(ps -o etime= -p "$pid" 2>/dev/null | tr -d ' ')"
    done
    [[ -n $(zfs_fuse_pids) ]] || log "no zfs-fuse process"
    if [[ -S $ZFS_SOCKET ]]; then log "socket $ZFS_SOCKET exists"; else log "no socket $ZFS_SOCKET"; fi
    if out=$(timeout -k 2 10 zpool list -H -o name,health,size,alloc 2>&1); then
        log "pools (name health size alloc):"
        printf '%s\n' "${out:-  none}" | sed 's/^/    /' >&2
    else
        log "zpool list failed or did not answer within 10 s: ${out:-no output}"
    fi
    out=$(ps -eo pid=,stat=,wchan:24=,args= 2>/dev/null | awk '$2 ~ /^D/' | head -n 10 | cut -c1-160)
    if [[ -n $out ]]; then
        log "processes in uninterruptible sleep:"
        printf '%s\n' "$out" | sed 's/^/    /' >&2
    fi
    if [[ -s $ZFS_FUSE_LOG ]]; then
        log "last lines of $ZFS_FUSE_LOG:"
        grep -v "^detected: default_permissions$" "$ZFS_FUSE_LOG" | tail -n 15 | sed 's/^/    /' >&2
    fi
}

# zfs_fuse_note TEXT: a line in the daemon's log, so that a run that passed
# only thanks to a restart or a retry still leaves a trace (scripts/test
# prints the lines a run added).
zfs_fuse_note() {
    printf '%s scripts/lab (pid %s) %s\n' "$(date -u +%FT%TZ)" "$$" "$1" >>"$ZFS_FUSE_LOG" 2>/dev/null || true
}

# Start a daemon (none may be running) and wait until it answers.  One that
# exits at once (its predecessor's files not yet released) gets two more
# tries.
start_zfs_fuse() {
    local try
    for ((try = 1; try <= 3; try++)); do
        start_zfs_fuse_once && return 0
        sleep 1
    done
    zfs_fuse_state
    die "zfs-fuse did not start (three tries); see $ZFS_FUSE_LOG"
}

start_zfs_fuse_once() {
    rm -f -- "$ZFS_SOCKET"
    log "starting zfs-fuse (its messages go to $ZFS_FUSE_LOG)"
    zfs_fuse_note "starts zfs-fuse"
    # In the foreground of a session of its own, its output in the log.  It
    # must inherit no descriptor but stdio: not our lock (fd 9), and not
    # whatever the caller holds (a test harness's pipes, a developer's own
    # lock file), or it keeps them for its whole life (seen: a daemon holding
    # a lock every later test run waited for).
    (
        local fd
        for fd in /proc/self/fd/*; do
            fd=${fd##*/}
            if ((fd > 2)); then eval "exec $fd>&-"; fi
        done 2>/dev/null
        exec setsid zfs-fuse --no-daemon </dev/null >>"$ZFS_FUSE_LOG" 2>&1
    ) &
    local pid=$! i
    # As its Debian init script does: the OOM killer must take anything else
    # first, every lab's data hangs on this process.
    echo -1000 >"/proc/$pid/oom_score_adj" 2>/dev/null || true
    for ((i = 0; i < 120; i++)); do
        if gone "$pid"; then
            log "zfs-fuse (pid $pid) exited at once"
            return 1
        fi
        if [[ -S $ZFS_SOCKET ]] && timeout -k 2 10 zpool list -H -o name >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.25
    done
    zfs_fuse_state
    die "zfs-fuse (pid $pid) did not answer within 30 s of its start"
}

# Remove the dead FUSE mounts a killed daemon leaves behind ("Transport
# endpoint is not connected"): a new daemon cannot mount over them, and
# nothing can walk into them.  Only call with no daemon running.
unmount_dead_zfs_mounts() {
    local m
    while read -r m; do
        [[ -n $m ]] || continue
        log "unmounting the dead zfs-fuse mount $m"
        umount -l "$m" || log "warning: could not unmount $m"
    done < <(awk '$3 == "fuse.zfs" || ($2 == "/zfs-kstat" && $3 ~ /^fuse/) {print $2}' /proc/self/mounts | sort -r)
}

# After a daemon died, the new one imports every pool its cache lists.  Pools
# that cannot be opened (FAULTED, UNAVAIL) whose every vdev is a lab's
# DIR/pool.img with the lab gone (no DIR/$MARKER) are removed; any other
# unhealthy pool is only reported, for its own lab's teardown.
clean_orphan_pools() {
    local name health vdev dir orphan
    while read -r name health; do
        [[ -n $name && $health != ONLINE ]] || continue
        orphan=1
        while read -r vdev; do
            dir=${vdev%/pool.img}
            if [[ $vdev != /*/pool.img || -f $dir/$MARKER ]]; then orphan=0; fi
        done < <(zfs_run zpool status "$name" 2>/dev/null | awk '$1 ~ /^\// {print $1}')
        if ((orphan)); then
            log "destroying pool $name ($health): the lab it belonged to is gone"
            zfs_run zpool destroy -f "$name" || log "warning: could not destroy pool $name"
        else
            log "note: pool $name is $health; left for its lab's teardown"
        fi
    done < <(zfs_run zpool list -H -o name,health 2>/dev/null || true)
}

# restart_zfs_fuse WHY: kill the daemon (dead, stopped or hung), clean up
# after it and start a new one.  Caller holds the lock.
restart_zfs_fuse() {
    log "zfs-fuse $1: restarting it"
    zfs_fuse_note "RESTART: zfs-fuse $1"
    zfs_fuse_state
    local -a pids=()
    mapfile -t pids < <(zfs_fuse_pids)
    if ((${#pids[@]})); then
        log "killing zfs-fuse ${pids[*]}"
        kill -KILL "${pids[@]}" 2>/dev/null || true
        local i pid alive
        for ((i = 0; i < 80; i++)); do
            alive=0
            for pid in "${pids[@]}"; do
                gone "$pid" || alive=1
            done
            ((alive)) || break
            sleep 0.25
        done
        ((alive == 0)) || die "zfs-fuse ${pids[*]} did not die on SIGKILL"
    fi
    unmount_dead_zfs_mounts
    start_zfs_fuse
    clean_orphan_pools
}

# ensure_zfs_fuse: a daemon that answers, started or restarted if need be.
# Takes the lock; the caller may already hold it.
ensure_zfs_fuse() {
    command -v zfs-fuse >/dev/null 2>&1 || die "zfs-fuse is not installed; run scripts/install-deps"
    zfs_lock
    if [[ -z $(zfs_fuse_pids) ]]; then
        # A fresh machine, or a daemon that died: its socket then answers
        # "connection refused" for ever, and its mounts are dead.  (One that
        # was stopped properly removed its socket.)
        if [[ -S $ZFS_SOCKET ]]; then
            log "zfs-fuse is not running but left $ZFS_SOCKET: it died; starting a new one"
            zfs_fuse_note "RESTART: zfs-fuse had died (no process, its socket left behind)"
        fi
        unmount_dead_zfs_mounts
        start_zfs_fuse
        clean_orphan_pools
    elif ! zfs_fuse_answers; then
        restart_zfs_fuse "$ZFS_FUSE_WHY"
    fi
    zfs_unlock
}

# No `grep -q` in pipelines: it exits at the first match, the writer dies of
# SIGPIPE, and pipefail reports the match as a failure.
pool_exists() { zfs_run zpool list -H -o name 2>/dev/null | grep -xF -- "$1" >/dev/null; }

# Pools whose only vdev is DIR/pool.img, found from zpool status; this works
# even when the lab's marker is gone.
pools_backed_by() {
    local img=$1/pool.img name
    while read -r name; do
        [[ -n $name ]] || continue
        if zfs_run zpool status "$name" 2>/dev/null | awk '{print $1}' | grep -xF -- "$img" >/dev/null; then
            printf '%s\n' "$name"
        fi
    done < <(zfs_run zpool list -H -o name 2>/dev/null || true)
}

# destroy_pool NAME, under the lock: "dataset is busy" for a moment after a
# process that used a mount exited, so a few tries; a daemon that stops
# answering meanwhile is restarted (it imports the pool again from its cache).
destroy_pool() {
    local pool=$1 i
    for ((i = 1; i <= 10; i++)); do
        zfs_run zpool destroy -f "$pool" 2>/dev/null && return 0
        pool_exists "$pool" || return 0
        if ! zfs_fuse_answers; then
            restart_zfs_fuse "$ZFS_FUSE_WHY, while destroying pool $pool"
        fi
        sleep 0.5
    done
    zfs_run zpool destroy -f "$pool" && return 0
    zfs_fuse_state
    die "could not destroy pool $pool"
}

# A ZFS pool name from a directory name: letters, digits, '_' and '-', starting
# with a letter, and not one of the words zpool reserves for vdev types.
pool_name_from() {
    local n=${1//[^A-Za-z0-9_-]/_}
    [[ $n =~ ^[A-Za-z] ]] || n="lab$n"
    if [[ $n =~ ^(mirror|raidz|draid|spare|log$|c[0-9]) ]]; then n="lab-$n"; fi
    printf '%s\n' "${n:0:60}"
}

valid_pool_name() {
    [[ $1 =~ ^[A-Za-z][A-Za-z0-9_-]*$ && ${#1} -le 60 ]] &&
        ! [[ $1 =~ ^(mirror|raidz|draid|spare|log$|c[0-9]) ]]
}

# Size of the sparse file behind the lab pool (truncate(1) syntax).  4G holds
# the small scales the tests use; --pool-size raises it for benchmarks (scale
# 200 is ~3 GB per copy, and a lab holds db1 plus db2's received copy).
POOL_SIZE=4G

# create_pool NAME DIR: the lab pool and db1's dataset, mounted at DIR/db1.
# Under the lock: zfs-fuse died when two labs created their pools at once.
create_pool() {
    local name=$1 dir=$2
    log "pool $name on $dir/pool.img (sparse, $POOL_SIZE)"
    truncate -s "$POOL_SIZE" "$dir/pool.img"
    zfs_lock
    ensure_zfs_fuse
    pool_exists "$name" && die "a pool named $name already exists (another lab?)"
    # zpool chats about the block size it picked; only errors matter.
    zfs_run zpool create -m none "$name" "$dir/pool.img" 2>&1 | grep -v '^Defaulting to' >&2 || true
    pool_exists "$name" || die "zpool create $name failed"
    # LAB_POOL_COMPRESSION (bench/run): every dataset of the pool inherits it, as
    # on a FreeBSD pool made with compression=lz4 (zfs-fuse has lzjb: "on").
    if [[ -n ${LAB_POOL_COMPRESSION:-} ]]; then
        [[ $LAB_POOL_COMPRESSION =~ ^[a-z0-9-]+$ ]] || die "LAB_POOL_COMPRESSION: not a compression name"
        zfs_run zfs set "compression=$LAB_POOL_COMPRESSION" "$name" || die "zfs set compression on $name failed"
    fi
    # 16k records, as recommended for PostgreSQL in the README: with the 128k
    # default, one changed 8 kB page makes a whole 128k record travel in the
    # next incremental send (measured here: ~5x more bytes for random updates).
    zfs_run zfs create -o recordsize=16k -o mountpoint="$dir/db1" "$name/db1" || die "zfs create $name/db1 failed"
    [[ $(zfs_run zfs get -H -o value mounted "$name/db1") == yes ]] || die "$name/db1 is not mounted"
    # The first write into the new mount, still under the lock (a daemon that
    # came back hung exactly here, in mkdir).
    timeout -k 5 60 mkdir -m 0700 "$dir/db1/data" || die "mkdir in the new $name/db1 failed or hung"
    chown postgres:postgres "$dir/db1/data"
    zfs_unlock
}
