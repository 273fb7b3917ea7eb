#!/bin/sh
# End-to-end run of the FreeBSD lab, from the host, after `vagrant up` (see README.md):
#
#   sh e2e.sh
#
# 1. re-seed db2 and db3 from db1 (full, then incremental) through the forced command;
# 2. refusals: the standby key cannot do anything else on db1;
# 3. failover: stop db1's PostgreSQL and CARP, db2 becomes MASTER and promotes;
# 4. rejoin: db1 comes back as a standby of db2, without pg_rewind;
# 5. switchover back to db1, db3 follows;
# 6. the libzfs_core backend's kernel tests, and feature detection on OpenZFS;
# 7. resume: an interrupted re-seed continues from the receive_resume_token.
#
# Steps 3-5 use commands from the HA issue (promote, carp-event, rejoin, switchover,
# follow); until they exist those steps fail and say so. Exits non-zero at the first
# failed step.
set -eu
cd "$(dirname "$0")"

VIP=10.77.0.10
step() { printf '\n==> %s\n' "$*"; }
fail() { printf 'e2e: FAILED: %s\n' "$*" >&2; exit 1; }
# Run a command as root on a node; the arguments are one shell command line there,
# which must not contain single quotes (it is wrapped in them for sudo sh -c).
on() { node=$1; shift; vagrant ssh "$node" -c "sudo sh -c '$*'" </dev/null; }
sql() { node=$1; shift; on "$node" "su -m postgres -c \"psql -XAtq -d postgres -c \\\"$*\\\"\""; }
streaming() {
    state=$(sql "$1" "SELECT status FROM pg_stat_wal_receiver" | tr -d '\r')
    [ "$state" = streaming ] || fail "$1 is not streaming (wal receiver: ${state:-none})"
}
wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
    limit=$1 what=$2
    shift 2
    i=0
    until "$@" >/dev/null 2>&1; do
        i=$((i + 1))
        [ "$i" -le "$limit" ] || fail "timed out after ${limit}s waiting for $what"
        sleep 1
    done
}
writable() { sql "$1" "SELECT NOT pg_is_in_recovery()" | grep -q t; }

step "1. re-seed db2 and db3 from db1: full, then incremental"
for n in db2 db3; do
    on "$n" "pgzfs --node $n reset-secondary --yes"
    streaming "$n"
done
sql db1 "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid % 10 = 0" >/dev/null
for n in db2 db3; do
    on "$n" "pgzfs --node $n reset-secondary --yes --json" | grep -q '"mode": "incremental"' ||
        fail "the second re-seed of $n was not incremental"
    streaming "$n"
done

step "2. the standby key can do nothing else on db1"
if on db2 "ssh -i /root/.ssh/id_ed25519 zfssync@10.77.0.11 zfs destroy -r tank/pgdata"; then
    fail "zfs destroy through the forced command was not refused"
fi
on db1 "zfs list tank/pgdata" >/dev/null || fail "tank/pgdata is gone"

step "3. failover: db1 stops, db2 takes the CARP address and promotes"
start=$(date +%s)
on db1 "service postgresql stop; sysctl net.inet.carp.demotion=240"
wait_for 60 "db2 to become a writable primary" writable db2
echo "failover: db2 writable $(( $(date +%s) - start ))s after db1 stopped"
on db2 "ifconfig | grep -q \"carp: MASTER vhid 1\"" || fail "db2 does not hold the CARP address $VIP"

step "4. rejoin: db1 becomes a standby of db2 without pg_rewind"
on db1 "sysctl net.inet.carp.demotion=-240; pgzfs --node db1 rejoin --to db2"
streaming db1

step "5. switchover back to db1; db3 follows"
on db2 "pgzfs --node db2 switchover --to db1"
wait_for 60 "db1 to be the primary again" writable db1
on db3 "pgzfs --node db3 follow --to db1"
streaming db2
streaming db3

step "6. libzfs_core backend and OpenZFS feature detection on kernel ZFS"
on db3 "zfs create -p tank/lzctest"
on db3 "cd /vagrant && CARGO_TARGET_DIR=/var/tmp/pgzfs-target PGZFS_LZC_TEST_DATASET=tank/lzctest cargo test -q --lib --features libzfs-core"
on db3 "zfs destroy -r tank/lzctest"
# Record what FreeBSD's OpenZFS prints, to compare with the fixtures in
# tests/fixtures/openzfs-2.1 (recorded on Linux; see tests/fixtures/README.md).
mkdir -p .lab/recorded
on db1 "zfs send 2>&1; true" >.lab/recorded/send-usage.txt
on db1 "zpool get -H -o value feature@bookmarks tank" >.lab/recorded/zpool-get-feature-bookmarks.txt
on db1 "zfs get -H -o value receive_resume_token tank/pgdata" >.lab/recorded/get-receive_resume_token-none.txt
grep -q -- '-t <receive_resume_token>' .lab/recorded/send-usage.txt || fail "OpenZFS send usage lists no -t"

step "7. resume: an interrupted re-seed of db3 continues where it stopped"
on db1 "su -m postgres -c \"pgbench -i -q -s 20 postgres\"" >/dev/null
on db3 "pgzfs --node db3 reset-secondary --yes --full & sleep 8; pkill -INT -f \"pgzfs --node db3 reset-secondary\"; wait; true"
token=$(on db3 "zfs get -H -o value receive_resume_token tank/pgdata" | tr -d '\r')
if [ -z "$token" ] || [ "$token" = - ]; then
    fail "the interrupted receive left no resume token (is receive -s wired in?)"
fi
on db3 "pgzfs --node db3 reset-secondary --yes --json" | grep -q '"resumed": true' ||
    fail "the second run did not resume the interrupted transfer"
streaming db3

printf '\ne2e: OK\n'
