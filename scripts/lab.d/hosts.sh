# shellcheck shell=bash disable=SC2164 # scripts/lab runs under set -e: a failed cd exits
# scripts/lab, hosts mode: network namespaces as hosts, the lab switch, CARP
# (ucarp) and pgbouncer; `scripts/lab exec`, carp-stop, carp-start, link-down,
# link-up.
#
# Sourced by scripts/lab (never run by itself), which defines the constants
# (CLIENT_BIN, MARKER, LOCK_FILE, ...), log, die and usage_error.

# Command prefix that runs something inside network namespace $1 (nothing for
# ""), in the array NS_RUN.  nsenter --net, not `ip netns exec`: the latter also
# gives the command a private copy of the mount table, and a `zfs unmount` (or
# the unmount inside `zfs destroy`/`zfs receive -F`) run from there removes
# only that copy while zfs-fuse keeps the real mount, after which the dataset
# stays "busy" for everyone (seen on this lab).  Entering only the network
# namespace keeps every node on the machine's one mount table, the same one
# zfs-fuse mounts into.
NS_RUN=()
ns_prefix() {
    if [[ -n $1 ]]; then
        NS_RUN=(nsenter "--net=$NETNS_DIR/$1" --)
    else
        NS_RUN=()
    fi
}

# Third octet of the lab's private 10.213.X.0/24, from its name.  Each lab has
# its own switch namespace, so equal subnets could not collide anyway; distinct
# ones just keep logs and captures of parallel labs apart.
lab_octet() {
    local sum
    sum=$(printf '%s' "$1" | cksum | cut -d' ' -f1)
    echo $((sum % 250 + 1))
}

# Lower advskew wins the CARP election: db1 0, db2 50, db3 100.
carp_skew() { echo $((($1 - 1) * 50)); }

# add_netns DIR NS: a namespace with loopback up (PostgreSQL <= 14's statistics
# collector needs a working localhost).  Listed in DIR/netns before it exists,
# so that teardown after a failure half-way still finds it.
add_netns() {
    echo "$2" >>"$1/netns"
    ip netns add "$2"
    ip -n "$2" link set lo up
}

# plug SWITCH_NS NS PORT ADDR [IFACE BRIDGE]: a veth pair from NS (IFACE there,
# eth0 by default) to bridge port PORT of BRIDGE (br0) in the switch namespace.  Both ends are created directly in their
# namespaces, so no name ever appears in (or clashes with) the root namespace;
# names only need to be unique per namespace.
plug() {
    local sw=$1 ns=$2 port=$3 addr=$4 iface=${5:-eth0} bridge=${6:-br0}
    ip link add "$iface" netns "$ns" type veth peer name "$port" netns "$sw"
    ip -n "$sw" link set "$port" master "$bridge" up
    ip -n "$ns" addr add "$addr/24" dev "$iface"
    ip -n "$ns" link set "$iface" up
}

# The hook ucarp runs as up.sh/down.sh.  Every value it needs is baked in, so
# it depends on nothing in ucarp's environment.
write_carp_hook() {
    local dir=$1 pgzfs_bin=$2
    cat >"$dir/carp/hook" <<EOF
#!/bin/bash
# Written by scripts/lab up --carp.  ucarp runs up.sh / down.sh with
#   IFACE VIP NODE          (NODE is ucarp's --xparam)
# and they call this as: hook MASTER|BACKUP IFACE VIP NODE.
# It moves the VIP at once (ucarp waits for nothing else), records the state,
# then hands the event to pgzfs in the background.
set -euo pipefail
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
carp=$dir/carp
pgzfs=$pgzfs_bin
config=$dir/pgzfs.toml
vhid=$CARP_VHID

stamp() { date +%Y-%m-%dT%H:%M:%S.%3N; }

if [[ \${1:-} == --run ]]; then
    # Background half: one pgzfs carp-event, with its exit status logged.
    state=\$2 iface=\$3 node=\$4
    echo "\$(stamp) \$node: running \$pgzfs --config \$config --node \$node carp-event \$state --iface \$iface --vhid \$vhid"
    rc=0
    "\$pgzfs" --config "\$config" --node "\$node" carp-event "\$state" --iface "\$iface" --vhid "\$vhid" || rc=\$?
    echo "\$(stamp) \$node: pgzfs carp-event \$state exited \$rc"
    exit 0
fi

state=\${1:?state} iface=\${2:?iface} vip=\${3:?vip} node=\${4:?node, from ucarp --xparam}
events=\$carp/\$node-events.log
case \$state in
    MASTER) ip addr replace "\$vip/24" dev "\$iface" ;;
    BACKUP) ip addr del "\$vip/24" dev "\$iface" 2>/dev/null || true ;;
    *) echo "hook: unknown state \$state" >&2; exit 2 ;;
esac
echo "\$state" >"\$carp/\$node.state"
echo "\$(stamp) \$node: \$state on \$iface, VIP \$vip \$([[ \$state == MASTER ]] && echo added || echo removed)" >>"\$events"
if [[ -e \$carp/hooks-off ]]; then
    echo "\$(stamp) \$node: \$carp/hooks-off exists, pgzfs not called" >>"\$events"
    exit 0
fi
# Detached (own session, HUP ignored) and not waited for: a promotion or a
# rejoin can take far longer than ucarp should be kept from advertising.
# Overlapping events are fine because pgzfs serializes its calls on the
# node's lock; but the lock does not order them, so pgzfs must act on the
# node's real CARP state, not trust that the last event to run is the newest
# (\$carp/\$node.state and the VIP on the interface tell which is current).
setsid nohup "\$0" --run "\$state" "\$iface" "\$node" </dev/null >>"\$events" 2>&1 &
EOF
    printf '#!/bin/sh\n# ucarp upscript: IFACE VIP NODE\nexec %s MASTER "$@"\n' "$dir/carp/hook" >"$dir/carp/up.sh"
    printf '#!/bin/sh\n# ucarp downscript: IFACE VIP NODE\nexec %s BACKUP "$@"\n' "$dir/carp/hook" >"$dir/carp/down.sh"
    chmod 0755 "$dir/carp/hook" "$dir/carp/up.sh" "$dir/carp/down.sh"
}

# start_ucarp DIR NODE NS ADDR VIP SKEW NEUTRAL
#
# No --preempt: a node that comes back (the old primary after a failover) must
# stay BACKUP and be fenced/rejoined, not grab the VIP back from the new
# primary because its advskew is lower.  --shutdown: a deliberate stop (TERM)
# runs the down script, so a node leaving on purpose drops the VIP and says
# BACKUP.  --neutral (only when asked) skips the down script of the BACKUP
# state ucarp starts in; `up` uses it so that starting the lab does not tell
# the running primary to fence itself, while carp-start leaves it out so a
# returning node does report BACKUP.  ucarp logs to syslog, and in the
# foreground also to stderr: run it in the foreground under setsid, with its
# output in DIR/carp/NODE.log.
start_ucarp() {
    local dir=$1 node=$2 ns=$3 addr=$4 vip=$5 skew=$6 neutral=$7 pid
    local -a opts=(--interface=eth0 "--srcip=$addr" "--vhid=$CARP_VHID" "--passfile=$dir/carp/passfile"
        "--addr=$vip" --advbase=1 "--advskew=$skew" "--upscript=$dir/carp/up.sh"
        "--downscript=$dir/carp/down.sh" --shutdown "--xparam=$node")
    if ((neutral)); then opts+=(--neutral); fi
    ns_prefix "$ns"
    # setsid execs in place (a background job is never a group leader), and
    # so does nsenter without --fork, so $! is ucarp itself.
    setsid "${NS_RUN[@]}" ucarp "${opts[@]}" </dev/null >>"$dir/carp/$node.log" 2>&1 &
    pid=$!
    echo "$pid" >"$dir/carp/$node.pid"
    sleep 0.2
    [[ $(cat "/proc/$pid/comm" 2>/dev/null) == ucarp ]] ||
        die "ucarp for $node did not start (see $dir/carp/$node.log)"
}

# has_vip NS VIP: the VIP is on NS's eth0.
has_vip() {
    ip -n "$1" -o -4 addr show dev eth0 2>/dev/null | awk '{print $4}' | grep -xF -- "$2/24" >/dev/null
}

setup_pgbouncer() {
    local dir=$1 ns=$2 addr=$3 db1_addr=$4 app_password=$5 password=$6
    local pb=$dir/pgbouncer
    install -d -o postgres -g postgres -m 0755 "$pb"
    # The file contrib/pgbouncer-repoint rewrites; pgbouncer re-reads it on
    # RELOAD.  It must stay readable by postgres.
    cat >"$pb/databases.ini" <<EOF
[databases]
postgres = host=$db1_addr port=$HOSTS_PG_PORT dbname=postgres
EOF
    # Lab only: clients are trusted (pgbouncer listens only inside the lab's
    # private namespace and on a socket below DIR); pgbouncer itself logs in
    # to PostgreSQL with the plain passwords of the auth_file, which scram
    # needs.  trust still wants every user name listed, hence postgres with no
    # password (the admin console user).
    (
        umask 077
        printf '"app" "%s"\n"replicator" "%s"\n"postgres" ""\n' "$app_password" "$password" >"$pb/userlist.txt"
    )
    chown postgres:postgres "$pb/userlist.txt"
    install -o postgres -g postgres -m 0640 /dev/null "$pb/pgbouncer.log"
    cat >"$pb/pgbouncer.ini" <<EOF
; pgzfs lab pgbouncer, written by scripts/lab up --pgbouncer.
[pgbouncer]
listen_addr = $addr
listen_port = $PGBOUNCER_PORT
unix_socket_dir = $pb
auth_type = trust
auth_file = $pb/userlist.txt
admin_users = postgres
; Transaction pooling: PAUSE then waits only for running transactions, not for
; every client session to end (pgbench keeps its sessions for the whole run).
pool_mode = transaction
max_client_conn = 200
default_pool_size = 10
; Reconnect fast after a failover instead of the default 15 s back-off.
server_login_retry = 1
server_connect_timeout = 3
ignore_startup_parameters = extra_float_digits
logfile = $pb/pgbouncer.log
pidfile = $pb/pgbouncer.pid

%include $pb/databases.ini
EOF
    ns_prefix "$ns"
    # pgbouncer refuses to run as root.
    "${NS_RUN[@]}" runuser -u postgres -- pgbouncer -d -q "$pb/pgbouncer.ini" </dev/null >/dev/null 2>&1 ||
        die "pgbouncer did not start (see $pb/pgbouncer.log)"
    local i
    for ((i = 0; i < 40; i++)); do
        [[ -S $pb/.s.PGSQL.$PGBOUNCER_PORT ]] && return 0
        sleep 0.25
    done
    die "pgbouncer's socket $pb/.s.PGSQL.$PGBOUNCER_PORT did not appear"
}

up_hosts() {
    local dir=$1 name=$2 major=$3 scale=$4 pg_bin=$5 hosts=$6 carp=$7 pgbouncer=$8 pgzfs_bin=$9 replnet=${10}
    local octet subnet sw=$name-sw client_ns=$name-client k node ns addr rsubnet=""
    octet=$(lab_octet "$name")
    subnet=10.213.$octet
    # Another octet than the client network's, so that an address says which
    # network it is on.
    if ((replnet)); then rsubnet=10.213.$(((octet + 124) % 250 + 1)); fi
    local client_addr=$subnet.100 vip=$subnet.50
    # raddrs: where the other nodes reach each node for SSH and replication
    # (its client address unless there is a replication network).
    local -a addrs=("") nss=("") raddrs=("")
    for ((k = 1; k <= hosts; k++)); do
        addrs+=("$subnet.$k")
        nss+=("$name-db$k")
        if ((replnet)); then raddrs+=("$rsubnet.$k"); else raddrs+=("$subnet.$k"); fi
    done
    # shellcheck disable=SC2034 # read by su_psql and seed (postgres.sh)
    local DB1_PORT=$HOSTS_PG_PORT SOCK_DIR=$dir/sock1

    create_pool "$name" "$dir"
    for ((k = 1; k <= hosts; k++)); do
        install -d -o postgres -g postgres -m 0755 "$dir/sock$k"
        # pg_ctl -l opens the log as postgres, which cannot create files in DIR.
        install -o postgres -g postgres -m 0640 /dev/null "$dir/db$k.log"
    done

    log "network: switch $sw, nodes ${nss[*]:1}, client $client_ns on $subnet.0/24"
    add_netns "$dir" "$sw"
    # No STP, no forwarding delay: ports forward as soon as they are up.
    ip -n "$sw" link add br0 type bridge stp_state 0 forward_delay 0
    ip -n "$sw" link set br0 up
    for ((k = 1; k <= hosts; k++)); do
        add_netns "$dir" "${nss[k]}"
        plug "$sw" "${nss[k]}" "db$k" "${addrs[k]}"
    done
    add_netns "$dir" "$client_ns"
    plug "$sw" "$client_ns" client "$client_addr"
    if ((replnet)); then
        log "replication network: bridge br1 in $sw, nodes on $rsubnet.0/24 (eth1)"
        ip -n "$sw" link add br1 type bridge stp_state 0 forward_delay 0
        ip -n "$sw" link set br1 up
        for ((k = 1; k <= hosts; k++)); do
            plug "$sw" "${nss[k]}" "r-db$k" "${raddrs[k]}" eth1 br1
        done
    fi

    log "sshd on ${raddrs[*]:1} (port $HOSTS_SSH_PORT, one per node namespace)"
    make_client_key "$dir/ssh"
    : >"$dir/ssh/known_hosts"
    for ((k = 1; k <= hosts; k++)); do
        prepare_sshd "$dir/ssh-db$k" "${raddrs[k]}" "$HOSTS_SSH_PORT" "$dir/ssh/authorized_keys" "${raddrs[k]} in ${nss[k]}"
        start_sshd "$dir/ssh-db$k" "${nss[k]}"
        # Port 22: plain "host key" entries, no "[host]:port".
        printf '%s %s\n' "${raddrs[k]}" "$(host_key "$dir/ssh-db$k")" >>"$dir/ssh/known_hosts"
    done
    chmod 0644 "$dir/ssh/known_hosts"
    for ((k = 1; k <= hosts; k++)); do
        wait_ssh "$dir" "${raddrs[k]}" "$HOSTS_SSH_PORT" "${nss[k]}"
    done

    # With CARP, every server also listens on the VIP, so that the node which
    # takes it over serves it without a restart.  It can bind to the VIP
    # before holding it thanks to ip_nonlocal_bind, which is per namespace.
    local -a listen=("")
    for ((k = 1; k <= hosts; k++)); do
        if ((carp)); then
            listen+=("${addrs[k]},$vip")
            ns_prefix "${nss[k]}"
            "${NS_RUN[@]}" sysctl -q -w net.ipv4.ip_nonlocal_bind=1 >/dev/null
        else
            listen+=("${addrs[k]}")
        fi
        if ((replnet)); then listen[k]+=",${raddrs[k]}"; fi
    done

    log "PostgreSQL $major primary db1 on ${listen[1]}:$DB1_PORT in ${nss[1]} ($pg_bin)"
    local -a hba=("$subnet.0/24")
    if ((replnet)); then hba+=("$rsubnet.0/24"); fi
    init_primary "$dir" "$pg_bin" "${listen[1]}" "${nss[1]}" "${hba[@]}"
    local version_num password app_password
    version_num=$(check_primary_version "$major")
    password=$(random_secret)
    app_password=$(random_secret)
    create_roles "$version_num" "$password" "$app_password"
    {
        for ((k = 1; k <= hosts; k++)); do
            printf '%s:*:*:replicator:%s\n' "${addrs[k]}" "$password"
            if ((replnet)); then printf '%s:*:*:replicator:%s\n' "${raddrs[k]}" "$password"; fi
        done
        printf '%s:*:*:replicator:%s\n' "$vip" "$password" "$client_addr" "$password"
        printf '*:*:replication:replicator:%s\n' "$password"
        printf '*:*:*:app:%s\n' "$app_password"
    } | write_pgpass "$dir/pgpass"
    seed "$dir" "$scale"
    # Clients through pgbouncer or the VIP log in as app; owning the tables
    # lets pgbench vacuum and truncate them as it does by default.
    printf '%s\n' "SELECT format('ALTER TABLE public.%I OWNER TO app', tablename) FROM pg_tables WHERE schemaname = 'public' \\gexec" |
        su_psql -f - >/dev/null

    {
        toml_head "$name" "$dir" "$pg_bin" "$HOSTS_SSH_PORT"
        for ((k = 1; k <= hosts; k++)); do
            if ((replnet)); then
                toml_node "$dir" "$name" "db$k" "${addrs[k]}" "$HOSTS_PG_PORT" "$dir/sock$k" "${listen[k]}" "${raddrs[k]}"
            else
                toml_node "$dir" "$name" "db$k" "${addrs[k]}" "$HOSTS_PG_PORT" "$dir/sock$k" "${listen[k]}"
            fi
        done
    } >"$dir/pgzfs.toml"

    if ((carp)); then
        log "CARP: VIP $vip (vhid $CARP_VHID), ucarp on every node, hooks run $pgzfs_bin"
        install -d -m 0755 "$dir/carp"
        (
            umask 077
            random_secret | cut -c1-16 >"$dir/carp/passfile"
        )
        write_carp_hook "$dir" "$pgzfs_bin"
        # db1 first, alone, until it holds the VIP: ucarps that start together
        # all time out as BACKUP at once and several become MASTER for a
        # moment (seen here), which would tell the standbys to promote.
        start_ucarp "$dir" db1 "${nss[1]}" "${addrs[1]}" "$vip" "$(carp_skew 1)" 1
        local i
        for ((i = 0; i < 40; i++)); do
            has_vip "${nss[1]}" "$vip" && break
            sleep 0.25
        done
        has_vip "${nss[1]}" "$vip" || die "db1 did not become CARP MASTER within 10 s (see $dir/carp/db1.log)"
        for ((k = 2; k <= hosts; k++)); do
            start_ucarp "$dir" "db$k" "${nss[k]}" "${addrs[k]}" "$vip" "$(carp_skew "$k")" 1
        done
    fi

    if ((pgbouncer)); then
        log "pgbouncer on $client_addr:$PGBOUNCER_PORT in $client_ns"
        setup_pgbouncer "$dir" "$client_ns" "$client_addr" "${addrs[1]}" "$app_password" "$password"
    fi

    {
        echo "LAB_DIR=$dir"
        echo "LAB_NAME=$name"
        echo "POOL=$name"
        echo "HOSTS=$hosts"
        echo "SUBNET=$subnet.0/24"
        if ((replnet)); then echo "REPL_SUBNET=$rsubnet.0/24"; fi
        echo "SSH_PORT=$HOSTS_SSH_PORT"
        echo "PG_MAJOR=$major"
        echo "PG_BIN=$pg_bin"
        echo "PGZFS_BIN=$pgzfs_bin"
        for ((k = 1; k <= hosts; k++)); do
            echo "DB${k}_ADDR=${addrs[k]}"
            # Where SSH and replication reach the node (its replication_host).
            echo "DB${k}_REPL_ADDR=${raddrs[k]}"
            echo "DB${k}_NS=${nss[k]}"
            echo "DB${k}_PORT=$HOSTS_PG_PORT"
            echo "DB${k}_DATA=$dir/db$k/data"
            echo "DB${k}_DATASET=$name/db$k"
            echo "DB${k}_SOCK=$dir/sock$k"
        done
        echo "CLIENT_NS=$client_ns"
        echo "CLIENT_ADDR=$client_addr"
        echo "SWITCH_NS=$sw"
        echo "CONFIG=$dir/pgzfs.toml"
        echo "PGPASSFILE=$dir/pgpass"
        # db1's socket under its loopback-mode name, so tools written for
        # that mode find the primary.
        echo "SOCK_DIR=$dir/sock1"
        echo "CLIENT_BIN=$CLIENT_BIN"
        echo "SSH_KEY=$dir/ssh/id_ed25519"
        echo "KNOWN_HOSTS=$dir/ssh/known_hosts"
        echo "APP_USER=app"
        if ((carp)); then
            echo "VIP=$vip"
            echo "CARP_VHID=$CARP_VHID"
            echo "CARP_DIR=$dir/carp"
        fi
        if ((pgbouncer)); then
            echo "PGBOUNCER_PORT=$PGBOUNCER_PORT"
            echo "PGBOUNCER_SOCK=$dir/pgbouncer"
            echo "PGBOUNCER_DATABASES=$dir/pgbouncer/databases.ini"
        fi
    } | write_env "$dir"

    # What pgzfs on a standby needs: db1 over ssh with strict host keys, and
    # the replication role over TCP with nothing but the pgpass file.
    local rec
    ssh_probe "$dir" "${raddrs[1]}" "$HOSTS_SSH_PORT" loud "${nss[2]}" ||
        die "ssh from ${nss[2]} to root@${raddrs[1]} failed"
    ns_prefix "${nss[2]}"
    rec=$(PGPASSFILE=$dir/pgpass "${NS_RUN[@]}" "$CLIENT_BIN/psql" -X -w -At -h "${raddrs[1]}" -p "$HOSTS_PG_PORT" \
        -U replicator -d postgres -c 'select pg_is_in_recovery()') ||
        die "replicator cannot log in to db1 from ${nss[2]} with $dir/pgpass"
    [[ $rec == f ]] || die "db1 unexpectedly reports pg_is_in_recovery() = $rec"
    if ((pgbouncer)); then
        ns_prefix "$client_ns"
        rec=$(PGPASSFILE=$dir/pgpass "${NS_RUN[@]}" "$CLIENT_BIN/psql" -X -w -At -h "$client_addr" -p "$PGBOUNCER_PORT" \
            -U app -d postgres -c 'select inet_server_addr()') ||
            die "app cannot reach db1 through pgbouncer"
        [[ $rec == "${addrs[1]}" ]] || die "pgbouncer reached $rec, not db1 (${addrs[1]})"
    fi

    cat <<EOF
lab up: $dir (pool $name, PostgreSQL $major, $hosts hosts on $subnet.0/24)
EOF
    for ((k = 1; k <= hosts; k++)); do
        if ((k == 1)); then
            node="primary, running"
        else
            node="not created yet"
        fi
        printf '  db%s     %s  ns %s  %s (%s)\n' "$k" "${addrs[k]}" "${nss[k]}" "$dir/db$k/data" "$node"
    done
    printf '  client  %s  ns %s\n' "$client_addr" "$client_ns"
    if ((replnet)); then printf '  replication network %s.0/24: %s\n' "$rsubnet" "${raddrs[*]:1}"; fi
    if ((carp)); then printf '  vip     %s  (ucarp vhid %s, MASTER db1; hooks: %s)\n' "$vip" "$CARP_VHID" "$dir/carp"; fi
    if ((pgbouncer)); then printf '  pgbouncer %s:%s  admin: psql -h %s -p %s -U postgres pgbouncer\n' \
        "$client_addr" "$PGBOUNCER_PORT" "$dir/pgbouncer" "$PGBOUNCER_PORT"; fi
    cat <<EOF
  config  $dir/pgzfs.toml
  env     $dir/lab.env
  exec    $SCRIPTS_DIR/lab exec $dir db1|...|client CMD
  down    $SCRIPTS_DIR/lab down $dir
EOF
}

# node_index NODE: K for dbK when this hosts-mode lab has it.
node_index() {
    local k
    [[ $1 =~ ^db([1-9])$ ]] || return 1
    k=${BASH_REMATCH[1]}
    ((k <= ${ENV[HOSTS]:-0})) || return 1
    echo "$k"
}

# hosts_env DIR: load a hosts-mode lab's env, or fail with a usage error.
hosts_env() {
    load_env "$1" || die "no lab at $1 (lab.env missing)"
    [[ -n ${ENV[HOSTS]:-} ]] || usage_error "$1 is a loopback lab; this needs one made with --hosts"
}

# The namespace of NODE (dbK or client) in a hosts-mode lab.
node_ns() {
    local k
    if [[ $1 == client ]]; then
        echo "${ENV[CLIENT_NS]}"
    elif k=$(node_index "$1"); then
        echo "${ENV[DB${k}_NS]}"
    else
        usage_error "NODE must be one of db1..db${ENV[HOSTS]} or client"
    fi
}

cmd_exec() {
    (($# >= 3)) || usage_error "exec needs DIR, NODE and a command"
    local dir ns
    dir=$(lab_dir_arg "$1")
    hosts_env "$dir"
    ns=$(node_ns "$2")
    shift 2
    [[ -e $NETNS_DIR/$ns ]] || die "namespace $ns does not exist"
    ns_prefix "$ns"
    # The caller's own command: relative paths mean theirs, not /.
    cd "$CALLER_PWD"
    # PGPASSFILE as a convenience: the lab's passwords work without -W.
    PGPASSFILE=${ENV[PGPASSFILE]} exec "${NS_RUN[@]}" "$@"
}

# carp_node DIR NODE: checks shared by carp-stop and carp-start; sets K.
carp_node() {
    hosts_env "$1"
    [[ -n ${ENV[VIP]:-} ]] || usage_error "$1 has no CARP (made without --carp)"
    K=$(node_index "$2") || usage_error "NODE must be one of db1..db${ENV[HOSTS]}"
}

# The PID of NODE's ucarp if it runs, else nothing.
ucarp_pid() {
    local dir=$1 node=$2 pid cmdline
    [[ -f $dir/carp/$node.pid ]] || return 0
    pid=$(head -n1 "$dir/carp/$node.pid")
    [[ $pid =~ ^[0-9]+$ ]] || return 0
    cmdline=$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" || true)
    if [[ $cmdline == *"--upscript=$dir/carp/up.sh"* && $cmdline == *"--xparam=$node"* ]]; then
        echo "$pid"
    fi
}

cmd_carp_stop() {
    (($# >= 2)) || usage_error "carp-stop needs DIR and NODE"
    local dir node=$2 graceful=0 pid K
    dir=$(lab_dir_arg "$1")
    shift 2
    while (($#)); do
        case $1 in
            --graceful) graceful=1; shift ;;
            *) usage_error "unknown option $1" ;;
        esac
    done
    carp_node "$dir" "$node"
    pid=$(ucarp_pid "$dir" "$node")
    [[ -n $pid ]] || die "ucarp of $node is not running"
    if ((graceful)); then
        # --shutdown: ucarp runs the down script (VIP removed, BACKUP event).
        log "$(date +%T.%3N) stopping ucarp of $node (TERM, graceful)"
        kill_and_wait "ucarp of $node" "$pid"
    else
        # A crash: no script runs.  The VIP is then removed by hand, because a
        # dead host would no longer answer for it either.
        log "$(date +%T.%3N) killing ucarp of $node (KILL, as a crash would)"
        kill -KILL "$pid"
        while [[ -e /proc/$pid ]]; do sleep 0.05; done
        ip -n "${ENV[DB${K}_NS]}" addr del "${ENV[VIP]}/24" dev eth0 2>/dev/null || true
    fi
    rm -f "$dir/carp/$node.pid"
}

cmd_carp_start() {
    (($# >= 2)) || usage_error "carp-start needs DIR and NODE"
    local dir node=$2 neutral=0 K how=""
    dir=$(lab_dir_arg "$1")
    shift 2
    while (($#)); do
        case $1 in
            --neutral) neutral=1; shift ;;
            *) usage_error "unknown option $1" ;;
        esac
    done
    carp_node "$dir" "$node"
    [[ -z $(ucarp_pid "$dir" "$node") ]] || die "ucarp of $node is already running"
    if ((neutral)); then how=" (--neutral)"; fi
    log "$(date +%T.%3N) starting ucarp of $node$how"
    start_ucarp "$dir" "$node" "${ENV[DB${K}_NS]}" "${ENV[DB${K}_ADDR]}" "${ENV[VIP]}" \
        "$(carp_skew "$K")" "$neutral"
}

# link-down / link-up: cut a node (or the client) off the lab switch and plug
# it back.  By default the port only leaves the bridge: the node keeps its
# carrier and notices nothing, like a partition further along the path, so
# its ucarp stays MASTER if it was (split brain).  --no-carrier takes the
# port down instead, like a pulled cable: the node sees NO-CARRIER and ucarp
# goes BACKUP by itself.
cmd_link() {
    local state=$1
    (($# >= 3)) || usage_error "link-$state needs DIR and NODE"
    local dir node=$3 carrier=1
    dir=$(lab_dir_arg "$2")
    shift 3
    while (($#)); do
        case $1 in
            --no-carrier) [[ $state == down ]] || usage_error "--no-carrier is for link-down"; carrier=0; shift ;;
            *) usage_error "unknown option $1" ;;
        esac
    done
    hosts_env "$dir"
    node_ns "$node" >/dev/null
    local sw=${ENV[SWITCH_NS]}
    if [[ $state == up ]]; then
        ip -n "$sw" link set "$node" master br0 up
    elif ((carrier)); then
        ip -n "$sw" link set "$node" nomaster
    else
        ip -n "$sw" link set "$node" down
    fi
    log "$(date +%T.%3N) $node's link is $state"
}
