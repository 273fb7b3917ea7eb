#!/bin/sh
# Provision one node of the pgzfs FreeBSD lab (run by Vagrant as root):
#
#   provision.sh NAME ADDRESS VIP ADVSKEW PG_MAJOR
#
# Every node gets the same setup, because roles change on failover: a ZFS pool on the
# second disk, PostgreSQL from pkg, pgzfs built with libzfs_core, the zfssync user bound
# to `pgzfs serve`, CARP for the service address, the devd hook and the rc.d service.
# Only db1 initialises a cluster; the standbys are seeded by e2e.sh with pgzfs itself.
set -eu

NAME=$1
ADDRESS=$2
VIP=$3
ADVSKEW=$4
PG_MAJOR=$5
REPO=/vagrant
LAB=$REPO/vagrant/.lab
DATASET=tank/pgdata
DATA_DIR=/var/db/postgres/data$PG_MAJOR
PASSWORD=pgzfs-lab-secret

say() { printf 'provision %s: %s\n' "$NAME" "$*"; }

say "packages"
env ASSUME_ALWAYS_YES=yes pkg install -q "postgresql$PG_MAJOR-server" "postgresql$PG_MAJOR-client" \
    "postgresql$PG_MAJOR-contrib" rust llvm pkgconf

say "OpenZFS headers for the libzfs-core build"
if [ ! -f /usr/src/sys/contrib/openzfs/include/libzfs_core.h ]; then
    release=$(freebsd-version -u | sed 's/-p[0-9]*$//')
    fetch -q -o /tmp/src.txz "https://download.freebsd.org/releases/amd64/$release/src.txz"
    tar -C / -xf /tmp/src.txz usr/src/sys/contrib/openzfs
    rm -f /tmp/src.txz
fi

say "ZFS pool on the second disk"
kldload -n zfs
sysrc -q zfs_enable=YES >/dev/null
if ! zpool list tank >/dev/null 2>&1; then
    disk=""
    for d in $(sysctl -n kern.disks); do
        # The empty disk is the one without a partition table.
        if ! gpart show "$d" >/dev/null 2>&1; then disk=$d; fi
    done
    [ -n "$disk" ] || { say "no empty second disk: run with VAGRANT_EXPERIMENTAL=disks"; exit 1; }
    zpool create tank "$disk"
fi

say "pgzfs (release build with libzfs_core)"
(cd "$REPO" && CARGO_TARGET_DIR=/var/tmp/pgzfs-target cargo build -q --release --features libzfs-core)
install -m 0755 /var/tmp/pgzfs-target/release/pgzfs /usr/local/bin/pgzfs

say "SSH: lab host key, root's key, zfssync bound to pgzfs serve"
install -m 0600 "$LAB/host_$NAME" /etc/ssh/ssh_host_ed25519_key
install -m 0644 "$LAB/host_$NAME.pub" /etc/ssh/ssh_host_ed25519_key.pub
service sshd restart >/dev/null
install -d -m 0700 /root/.ssh
install -m 0600 "$LAB/id_ed25519" /root/.ssh/id_ed25519
: >/root/.ssh/known_hosts
for peer in db1:11 db2:12 db3:13; do
    printf '%s %s\n' "10.77.0.${peer#*:}" "$(cut -d' ' -f1,2 "$LAB/host_${peer%%:*}.pub")" >>/root/.ssh/known_hosts
done
id zfssync >/dev/null 2>&1 || pw useradd -n zfssync -m -s /bin/sh -c "pgzfs ZFS transfers"
install -d -o zfssync -g zfssync -m 0700 /home/zfssync/.ssh
# One key for everything in this lab, so it also allows what switchover asks of a node
# (--allow-orchestration); docs/least-privilege.md shows how to give that to fewer keys.
printf 'from="10.77.0.0/24",command="/usr/local/bin/pgzfs serve --allow-orchestration --node %s",restrict %s\n' \
    "$NAME" "$(cat "$LAB/id_ed25519.pub")" >/home/zfssync/.ssh/authorized_keys
chown zfssync:zfssync /home/zfssync/.ssh/authorized_keys
chmod 0600 /home/zfssync/.ssh/authorized_keys
touch /var/log/pgzfs.log
chown root:zfssync /var/log/pgzfs.log
chmod 0660 /var/log/pgzfs.log

say "the config, the same on every node"
cat >/usr/local/etc/pgzfs.toml <<TOML
cluster = "lab"

[defaults]
dataset = "$DATASET"
data_dir = "$DATA_DIR"
pg_passfile = "/var/db/postgres/.pgpass"

[[nodes]]
name = "db1"
host = "10.77.0.11"

[[nodes]]
name = "db2"
host = "10.77.0.12"

[[nodes]]
name = "db3"
host = "10.77.0.13"
TOML
printf '*:5432:*:replicator:%s\n' "$PASSWORD" >/var/db/postgres/.pgpass 2>/dev/null || {
    install -d -o postgres -g postgres /var/db/postgres
    printf '*:5432:*:replicator:%s\n' "$PASSWORD" >/var/db/postgres/.pgpass
}
chown postgres:postgres /var/db/postgres/.pgpass
chmod 0600 /var/db/postgres/.pgpass

say "ZFS delegation for zfssync (docs/least-privilege.md)"
zfs allow -u zfssync snapshot,send,hold,release,userprop,mount,bookmark tank

say "PostgreSQL"
sysrc -q postgresql_enable=YES "postgresql_data=$DATA_DIR" >/dev/null
if [ "$NAME" = db1 ] && ! zfs list "$DATASET" >/dev/null 2>&1; then
    zfs create -o "mountpoint=$DATA_DIR" "$DATASET"
    chown postgres:postgres "$DATA_DIR"
    chmod 0700 "$DATA_DIR"
    service postgresql initdb >/dev/null
    cat >>"$DATA_DIR/postgresql.conf" <<CONF
listen_addresses = '*'
CONF
    cat >>"$DATA_DIR/pg_hba.conf" <<HBA
host  postgres     replicator  10.77.0.0/24  scram-sha-256
host  replication  replicator  10.77.0.0/24  scram-sha-256
HBA
    service postgresql start >/dev/null
    su -m postgres -c "psql -q -d postgres" <<SQL
CREATE ROLE replicator LOGIN REPLICATION PASSWORD '$PASSWORD';
GRANT pg_monitor TO replicator;
GRANT EXECUTE ON FUNCTION pg_backup_start(text, boolean) TO replicator;
GRANT EXECUTE ON FUNCTION pg_backup_stop(boolean) TO replicator;
SQL
    su -m postgres -c "pgbench -i -q -s 5 postgres" >/dev/null
fi

say "CARP: vhid 1, advskew $ADVSKEW, address $VIP"
grep -q '^carp_load=' /boot/loader.conf 2>/dev/null || echo 'carp_load="YES"' >>/boot/loader.conf
kldload -n carp
iface=$(ifconfig -l | tr ' ' '\n' | while read -r i; do
    if ifconfig "$i" | grep -q "inet $ADDRESS "; then echo "$i"; fi
done)
[ -n "$iface" ] || { say "no interface has $ADDRESS"; exit 1; }
sysrc -q "ifconfig_${iface}_alias0=inet vhid 1 advskew $ADVSKEW pass pgzfslab alias $VIP/32" >/dev/null
ifconfig "$iface" inet vhid 1 advskew "$ADVSKEW" pass pgzfslab alias "$VIP/32" 2>/dev/null || true

say "devd hook and rc.d service"
hook=$REPO/ifstated/devd-pgzfs.conf.sample
if [ -f "$hook" ]; then
    install -m 0644 "$hook" /usr/local/etc/devd/pgzfs.conf
    service devd restart >/dev/null
else
    say "WARNING: $hook does not exist yet: CARP events will not reach pgzfs"
fi
if [ -f "$REPO/rc.d/pgzfs" ]; then
    install -m 0555 "$REPO/rc.d/pgzfs" /usr/local/etc/rc.d/pgzfs
    sysrc -q pgzfs_enable=YES "pgzfs_flags=--node $NAME" >/dev/null
    service pgzfs start || say "WARNING: the pgzfs service did not start (see /var/log/pgzfs.log)"
fi
say "done"
