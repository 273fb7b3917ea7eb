# shellcheck shell=bash disable=SC2164 # scripts/lab runs under set -e: a failed cd exits
# scripts/lab, PostgreSQL: the primary db1, its roles, pgpass and pgbench
# data; `scripts/lab psql`.
#
# Sourced by scripts/lab (never run by itself), which defines the constants
# (CLIENT_BIN, MARKER, LOCK_FILE, ...), log, die and usage_error.

# psql as the superuser over db1's unix socket (trust); stops on the first
# error.  SOCK_DIR and DB1_PORT are the caller's locals.
su_psql() {
    "$CLIENT_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$SOCK_DIR" -p "$DB1_PORT" -U postgres -d postgres "$@"
}

# init_primary DIR PG_BIN LISTEN NAMESPACE HBA_SOURCE...: initdb and start db1
# in DIR/db1/data on port DB1_PORT with its socket in SOCK_DIR (the caller's
# locals), inside NAMESPACE ("" for none); scram over TCP from each HBA_SOURCE.
init_primary() {
    local dir=$1 pg_bin=$2 listen=$3 ns=$4
    shift 4
    local data=$dir/db1/data src
    # Bounded: on a hung zfs-fuse it would sleep in the kernel for ever.
    timeout -k 10 600 runuser -u postgres -- "$pg_bin/initdb" -D "$data" -U postgres --locale=C --encoding=UTF8 \
        --auth-local=trust --auth-host=scram-sha-256 >"$dir/initdb.log" 2>&1 ||
        die "initdb failed (see $dir/initdb.log)"
    # Only settings every major from 11 on knows.  password_encryption matters
    # for 11-13, whose default (md5) would store a hash scram auth cannot use.
    cat >>"$data/postgresql.conf" <<EOF

# --- pgzfs lab ---
port = $DB1_PORT
listen_addresses = '$listen'
unix_socket_directories = '$SOCK_DIR'
password_encryption = 'scram-sha-256'
wal_level = replica
max_wal_senders = 10
max_replication_slots = 10
hot_standby = on
shared_buffers = 32MB
max_connections = 30
EOF
    {
        echo "# pgzfs lab: trust over the unix socket (for the lab's own tooling),"
        echo "# passwords (scram) over TCP, replication included."
        echo "local all all trust"
        for src in "$@"; do echo "host all all $src scram-sha-256"; done
        for src in "$@"; do echo "host replication all $src scram-sha-256"; done
    } >"$data/pg_hba.conf"
    # The postmaster inherits the namespace: it can bind only to addresses
    # that exist there.
    ns_prefix "$ns"
    "${NS_RUN[@]}" runuser -u postgres -- "$pg_bin/pg_ctl" -w -t 60 -D "$data" -l "$dir/db1.log" start \
        </dev/null >/dev/null || die "db1 did not start (see $dir/db1.log)"
}

# create_roles VERSION_NUM PASSWORD [APP_PASSWORD]: the replication role pgzfs
# logs in as and, given a second password, the application role `app` that
# owns the pgbench tables (for clients that come through pgbouncer).
create_roles() {
    local version_num=$1 password=$2 app_password=${3:-}
    # REPLICATION alone allows creating and dropping physical slots; the backup
    # and promote functions are revoked from PUBLIC, so they are granted one by
    # one.  The SQL goes through stdin to keep the passwords out of ps.
    {
        echo "CREATE ROLE replicator LOGIN REPLICATION PASSWORD '$password';"
        echo "GRANT pg_monitor TO replicator;"
        if ((version_num >= 150000)); then
            echo "GRANT EXECUTE ON FUNCTION pg_backup_start(text, boolean) TO replicator;"
            echo "GRANT EXECUTE ON FUNCTION pg_backup_stop(boolean) TO replicator;"
        else
            echo "GRANT EXECUTE ON FUNCTION pg_start_backup(text, boolean, boolean) TO replicator;"
            echo "GRANT EXECUTE ON FUNCTION pg_stop_backup(boolean, boolean) TO replicator;"
        fi
        if ((version_num >= 120000)); then
            echo "GRANT EXECUTE ON FUNCTION pg_promote(boolean, integer) TO replicator;"
        fi
        if [[ -n $app_password ]]; then
            echo "CREATE ROLE app LOGIN PASSWORD '$app_password';"
        fi
    } | su_psql -f -
}

# Owned by postgres and 0600: the standby's walreceiver reads it as postgres
# via passfile=, libpq ignores a group/world-readable one, and root reads it
# regardless.  The lines come from stdin.
write_pgpass() {
    (
        umask 077
        cat >"$1"
    )
    chown postgres:postgres "$1"
    chmod 0600 "$1"
}

random_secret() { od -An -tx1 -N16 /dev/urandom | tr -d ' \n'; }

# seed DIR SCALE: pgbench tables on db1 (SOCK_DIR/DB1_PORT of the caller).
seed() {
    local dir=$1 scale=$2
    log "seeding: pgbench -i -s $scale"
    if ! timeout -k 10 $((600 + 30 * scale)) runuser -u postgres -- "$CLIENT_BIN/pgbench" -i -q -s "$scale" -h "$SOCK_DIR" -p "$DB1_PORT" -U postgres postgres \
        </dev/null >"$dir/pgbench-init.log" 2>&1; then
        # Should a client/server version mix ever break pgbench -i, still leave
        # some data to replicate.
        log "pgbench -i failed (see $dir/pgbench-init.log); seeding a plain table instead"
        su_psql -c "CREATE TABLE seed AS SELECT g AS id, md5(g::text) AS payload
                    FROM generate_series(1, $((scale * 100000))) AS g"
    fi
}

# check_primary_version MAJOR: the server's version_num, after making sure it
# is the major asked for.
check_primary_version() {
    local version_num
    version_num=$(su_psql -At -c 'show server_version_num')
    [[ ${version_num:0:2} == "$1" ]] ||
        die "expected PostgreSQL $1, the server reports $version_num"
    echo "$version_num"
}

cmd_psql() {
    (($# >= 2)) || usage_error "psql needs DIR and NODE"
    local dir node=$2 port sock k
    dir=$(lab_dir_arg "$1")
    shift 2
    load_env "$dir" || die "no lab at $dir (lab.env missing)"
    ns_prefix ""
    if [[ -n ${ENV[HOSTS]:-} ]]; then
        k=$(node_index "$node") || usage_error "NODE must be one of db1..db${ENV[HOSTS]}"
        port=${ENV[DB${k}_PORT]} sock=${ENV[DB${k}_SOCK]}
        # Inside the node's namespace, so `-h <address>` goes where that node
        # would go.  No fallback socket: every node uses port 5432, and
        # another node's socket would be another server.
        ns_prefix "${ENV[DB${k}_NS]}"
    else
        case $node in
            db1) port=${ENV[DB1_PORT]} sock=${ENV[SOCK_DIR]} ;;
            db2)
                port=${ENV[DB2_PORT]} sock=${ENV[SOCK2_DIR]:-$dir/sock2}
                # db2 is a clone of db1: until pgzfs applies its pg_settings, its
                # socket sits in db1's directory.
                [[ -S $sock/.s.PGSQL.$port ]] || sock=${ENV[SOCK_DIR]}
                ;;
            *) usage_error "NODE must be db1 or db2" ;;
        esac
    fi
    # The caller's own command: relative paths (-f file) mean theirs, not /.
    cd "$CALLER_PWD"
    # Defaults through the environment, so any psql argument overrides them.
    PGHOST=$sock PGPORT=$port PGUSER=postgres PGDATABASE=postgres PGPASSFILE=${ENV[PGPASSFILE]} \
        exec "${NS_RUN[@]}" "$CLIENT_BIN/psql" -X "$@"
}
