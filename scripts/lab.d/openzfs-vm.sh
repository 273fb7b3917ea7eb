# shellcheck shell=bash
# scripts/lab, the OpenZFS guest: a QEMU guest with kernel OpenZFS, a backend
# of the same lab for what zfs-fuse cannot run.  `scripts/lab vm SUBCOMMAND`,
# or scripts/openzfs-vm, which is that and documents the subcommands.
#
# Sourced by scripts/lab (never run by itself), which defines log, die,
# usage_error and CALLER_PWD.
CACHE=${PGZFS_VM_CACHE:-/var/cache/pgzfs-vm}
MIRROR=${PGZFS_VM_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
# The guest kernel: the newest 6.1 cloud kernel the archive has, unless named.
KERNEL=${PGZFS_VM_KERNEL:-}
REGISTRY=/run/pgzfs-vm
GUEST_PACKAGES=zfsutils-linux,openssh-server,postgresql-15,kmod,udev,iproute2,procps
POOL_DISK_SIZE=2G
ROOT_IMAGE_SIZE=3G

need_root() { [[ $(id -u) -eq 0 ]] || die "must run as root"; }

# dir_arg DIR: an absolute path of plain characters (it ends up in QEMU's
# command line and in the guest's ssh config).
dir_arg() {
    local d=$1
    [[ $d == /* ]] || d=$CALLER_PWD/$d
    [[ $d =~ ^[A-Za-z0-9._/-]+$ ]] || usage_error "DIR must be a path of letters, digits, '.', '_', '-' and '/': $1"
    printf '%s\n' "${d%/}"
}

# --------------------------------------------------------------------------
# deps: what building and booting the guest needs on a Debian 12 host
# --------------------------------------------------------------------------

QEMU=""
QEMU_DATA_ARGS=()

# find_qemu: the system's qemu-system-x86_64, or the copy `deps` unpacked into
# the cache when the package could not be installed (see vm_deps).
find_qemu() {
    if [[ -n ${PGZFS_VM_QEMU:-} ]]; then
        QEMU=$PGZFS_VM_QEMU
    elif command -v qemu-system-x86_64 >/dev/null 2>&1; then
        QEMU=$(command -v qemu-system-x86_64)
    elif [[ -x $CACHE/qemu/usr/bin/qemu-system-x86_64 ]]; then
        QEMU=$CACHE/qemu/usr/bin/qemu-system-x86_64
        QEMU_DATA_ARGS=(-L "$CACHE/qemu/usr/share/qemu" -L "$CACHE/qemu/usr/share/seabios")
    else
        return 1
    fi
}

vm_deps() {
    need_root
    export DEBIAN_FRONTEND=noninteractive
    local missing=() tool
    for tool in debootstrap:debootstrap mkfs.ext4:e2fsprogs ssh:openssh-client \
        ssh-keygen:openssh-client make:make gcc:gcc objcopy:binutils; do
        command -v "${tool%%:*}" >/dev/null 2>&1 || missing+=("${tool#*:}")
    done
    if ((${#missing[@]})); then
        log "installing ${missing[*]}"
        apt-get install -y --no-remove --no-install-recommends "${missing[@]}" >/dev/null ||
            die "apt-get install ${missing[*]} failed"
    fi
    find_qemu && return 0
    log "installing qemu-system-x86"
    # --no-remove: never take away what the machine has to make room for QEMU.
    if apt-get install -y --no-remove --no-install-recommends qemu-system-x86 >"$CACHE/qemu-install.log" 2>&1; then
        find_qemu || die "qemu-system-x86 is installed but qemu-system-x86_64 is not on PATH"
        return 0
    fi
    # A machine with a newer qemu-utils (e.g. from backports) cannot take
    # bookworm's qemu-system-x86 next to it.  Rather than downgrading what the
    # machine has, run bookworm's QEMU from an unpacked copy; only its shared
    # libraries get installed.
    log "qemu-system-x86 does not install here (see $CACHE/qemu-install.log); unpacking it under $CACHE/qemu"
    local libs
    libs=$(apt-cache depends qemu-system-x86 | sed -n 's/^ *Depends: \(lib[^ <>]*\)$/\1/p' | sort -u)
    # shellcheck disable=SC2086 # one package name per word
    apt-get install -y --no-remove --no-install-recommends $libs >/dev/null ||
        die "installing QEMU's libraries failed"
    local tmp
    tmp=$(mktemp -d "$CACHE/qemu-debs.XXXXXX")
    (cd "$tmp" && apt-get download qemu-system-x86 qemu-system-common qemu-system-data seabios) >/dev/null 2>&1 ||
        die "apt-get download of QEMU failed"
    rm -rf "$CACHE/qemu.new"
    local deb
    for deb in "$tmp"/*.deb; do dpkg-deb -x "$deb" "$CACHE/qemu.new"; done
    rm -rf "$tmp" "$CACHE/qemu"
    mv "$CACHE/qemu.new" "$CACHE/qemu"
    find_qemu || die "no qemu-system-x86_64 after unpacking"
    "$QEMU" --version >/dev/null || die "the unpacked QEMU does not run"
}

# --------------------------------------------------------------------------
# build
# --------------------------------------------------------------------------

# candidate PACKAGE: the version apt would install.
candidate() {
    apt-cache policy "$1" 2>/dev/null | sed -n 's/^ *Candidate: //p' | grep -v '(none)' || true
}

# resolve_versions: KERNEL, KERNEL_PKG_VERSION, ZFS_VERSION and the cache KEY.
resolve_versions() {
    if [[ -z $KERNEL ]]; then
        KERNEL=$(apt-cache pkgnames linux-headers-6.1.0- | grep -E '^linux-headers-6\.1\.0-[0-9]+-cloud-amd64$' |
            sed 's/^linux-headers-//' | sort -t- -k3,3n | tail -n 1)
        [[ -n $KERNEL ]] || die "the archive has no linux-headers-6.1.0-*-cloud-amd64 (run apt-get update?)"
    fi
    [[ $KERNEL =~ ^6\.1\.0-[0-9]+-cloud-amd64$ ]] || die "PGZFS_VM_KERNEL must look like 6.1.0-57-cloud-amd64"
    KERNEL_PKG_VERSION=$(candidate "linux-image-$KERNEL")
    [[ -n $KERNEL_PKG_VERSION ]] || die "the archive has no linux-image-$KERNEL"
    ZFS_VERSION=$(candidate zfs-dkms)
    [[ -n $ZFS_VERSION ]] || die "the archive has no zfs-dkms (is the contrib component enabled?)"
    local utils
    utils=$(candidate zfsutils-linux)
    [[ $utils == "$ZFS_VERSION" ]] || die "zfs-dkms $ZFS_VERSION and zfsutils-linux $utils differ"
    KEY="${KERNEL}_${KERNEL_PKG_VERSION}_zfs-${ZFS_VERSION}"
    KEY=${KEY//[^A-Za-z0-9._+-]/_}
}

# fetch_debs: the kernel, its headers and zfs-dkms, downloaded once into the cache.
fetch_debs() {
    local debs=$CACHE/debs pkg
    mkdir -p "$debs"
    local common=${KERNEL%-cloud-amd64}-common
    local wanted=(
        "linux-image-$KERNEL=$KERNEL_PKG_VERSION"
        "linux-headers-$KERNEL=$KERNEL_PKG_VERSION"
        "linux-headers-$common=$KERNEL_PKG_VERSION"
        "linux-kbuild-6.1=$KERNEL_PKG_VERSION"
        "zfs-dkms=$ZFS_VERSION"
    )
    for pkg in "${wanted[@]}"; do
        local name=${pkg%%=*} version=${pkg#*=}
        # .deb file names carry the version with ':' escaped as %3a.
        if compgen -G "$debs/${name}_${version//:/%3a}_*.deb" >/dev/null; then
            continue
        fi
        log "downloading $name $version"
        (cd "$debs" && apt-get download "$pkg") >/dev/null 2>&1 || die "apt-get download $pkg failed"
    done
}

deb_of() {
    local f
    f=$(compgen -G "$CACHE/debs/${1}_${2//:/%3a}_*.deb" | head -n 1)
    [[ -n $f ]] || die "no cached .deb for $1 $2"
    printf '%s\n' "$f"
}

# build_modules OUT: zfs-dkms compiled against the cloud kernel's headers.
build_modules() {
    local out=$1 work=$CACHE/work/modules-$KEY
    local common=${KERNEL%-cloud-amd64}-common
    rm -rf "$work"
    mkdir -p "$work"
    local pkg
    for pkg in "linux-headers-$KERNEL" "linux-headers-$common" linux-kbuild-6.1; do
        dpkg-deb -x "$(deb_of "$pkg" "$KERNEL_PKG_VERSION")" "$work"
    done
    dpkg-deb -x "$(deb_of zfs-dkms "$ZFS_VERSION")" "$work"
    local headers=$work/usr/src/linux-headers-$KERNEL
    # The flavour's Makefile includes the common headers by absolute path.
    sed -i "s#^include /usr/src/#include $work/usr/src/#" "$headers/Makefile"
    local src
    src=$(compgen -G "$work/usr/src/zfs-*" | head -n 1)
    [[ -d $src ]] || die "zfs-dkms has no /usr/src/zfs-* tree"
    log "building the ZFS module for $KERNEL (configure + make -j2: 6-10 minutes; log $work/build.log)"
    (
        cd "$src"
        ./configure --prefix=/usr --with-config=kernel \
            --with-linux="$work/usr/src/linux-headers-$common" --with-linux-obj="$headers"
        make -j2
    ) >"$work/build.log" 2>&1 || {
        tail -n 30 "$work/build.log" >&2
        die "building the ZFS module failed (see $work/build.log)"
    }
    rm -rf "$out.tmp"
    mkdir -p "$out.tmp"
    find "$src/module" -name '*.ko' -exec cp {} "$out.tmp/" \;
    [[ -f $out.tmp/zfs.ko && -f $out.tmp/spl.ko ]] || die "the build made no zfs.ko/spl.ko"
    rm -rf "$out"
    mv "$out.tmp" "$out"
    rm -rf "$work"
}

# The guest's PID 1: mounts, udev (zpool create on a whole disk waits for udev
# to announce the partitions it makes), the ZFS module, the lab's keys from
# the config disk, sshd.  Nothing else runs, so the guest is up in ~15 s.
write_guest_init() {
    cat >"$1" <<'EOF'
#!/bin/sh
# PID 1 of the pgzfs OpenZFS guest (written by scripts/openzfs-vm build).
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts -o gid=5,mode=620 devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
mount -t tmpfs -o mode=0755 tmpfs /run
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -o remount,rw /
hostname pgzfs-guest
echo "pgzfs-guest: starting udev"
/lib/systemd/systemd-udevd --daemon
udevadm trigger --action=add --type=subsystems
udevadm trigger --action=add --type=devices
udevadm settle --timeout=60
# The ARC would take half the guest's memory; PostgreSQL needs it more.
modprobe zfs zfs_arc_max=268435456 || echo "pgzfs-guest: ERROR: modprobe zfs failed"
ip link set lo up
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
ip route add default via 10.0.2.2
mkdir -p /run/pgzfs-config /root/.ssh /run/sshd
chmod 0700 /root/.ssh
tar -xf /dev/disk/by-id/virtio-pgzfs-config -C /run/pgzfs-config
install -m 0600 /run/pgzfs-config/ssh_host_ed25519_key /etc/ssh/ssh_host_ed25519_key
install -m 0644 /run/pgzfs-config/ssh_host_ed25519_key.pub /etc/ssh/ssh_host_ed25519_key.pub
install -m 0600 /run/pgzfs-config/authorized_keys /root/.ssh/authorized_keys
/usr/sbin/sshd -E /var/log/sshd.log
echo "pgzfs-guest: ready ($(cat /sys/module/zfs/version 2>/dev/null || echo 'no zfs'))"
# PID 1 must never exit; it also reaps what gets orphaned.
while :; do wait; sleep 1; done
EOF
    chmod 0755 "$1"
}

# build_root OUT_IMAGE OUT_KERNEL MODULES: a bookworm root with OpenZFS's
# userland, sshd and PostgreSQL 15, the cloud kernel's modules and ours.
build_root() {
    local image=$1 vmlinuz=$2 modules=$3 root=$CACHE/work/root-$KEY
    mkdir -p "$CACHE/work"
    # A finished debootstrap is kept until the image is made, so an interrupted
    # build does not start over; a half-finished one is thrown away.
    if [[ ! -d $root ]]; then
        rm -rf "$root.tmp"
        log "debootstrap $SUITE ($GUEST_PACKAGES): about 2 minutes; log $CACHE/work/debootstrap-$KEY.log"
        debootstrap --variant=minbase --components=main,contrib --include="$GUEST_PACKAGES" \
            "$SUITE" "$root.tmp" "$MIRROR" >"$CACHE/work/debootstrap-$KEY.log" 2>&1 || {
            tail -n 30 "$CACHE/work/debootstrap-$KEY.log" >&2
            die "debootstrap failed (see $CACHE/work/debootstrap-$KEY.log)"
        }
        mv "$root.tmp" "$root"
    fi
    local have
    # shellcheck disable=SC2016 # dpkg-query's own ${...} format
    have=$(chroot "$root" dpkg-query -W -f='${Version}' zfsutils-linux)
    [[ $have == "$ZFS_VERSION" ]] ||
        die "the guest got zfsutils-linux $have, but the module is $ZFS_VERSION"

    # The kernel's own modules (virtio-blk and virtio-net are modules in the
    # cloud kernel), then ours.
    # --keep-directory-symlink: the package's /lib/modules must land in
    # /usr/lib/modules through the root's /lib -> usr/lib, not replace the link.
    dpkg-deb --fsys-tarfile "$(deb_of "linux-image-$KERNEL" "$KERNEL_PKG_VERSION")" |
        tar -x --keep-directory-symlink -C "$root"
    mkdir -p "$root/lib/modules/$KERNEL/extra/zfs"
    cp "$modules"/*.ko "$root/lib/modules/$KERNEL/extra/zfs/"
    chroot "$root" depmod -a "$KERNEL"

    write_guest_init "$root/sbin/pgzfs-init"
    # Host keys come from each lab's config disk; the image carries none.
    rm -f "$root"/etc/ssh/ssh_host_*
    cat >"$root/etc/ssh/sshd_config.d/pgzfs.conf" <<'EOF'
# pgzfs OpenZFS guest: keys only; pgzfs opens many connections at once.
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UseDNS no
MaxStartups 100
MaxSessions 50
EOF
    printf '/dev/nvme0n1 / ext4 defaults 0 1\n' >"$root/etc/fstab"
    printf 'pgzfs-guest\n' >"$root/etc/hostname"
    printf '127.0.0.1 localhost pgzfs-guest\n' >"$root/etc/hosts"
    # The cluster Debian's package creates is not the lab's; the lab makes its own.
    chroot "$root" pg_dropcluster 15 main >/dev/null 2>&1 || true
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    cp "$root/boot/vmlinuz-$KERNEL" "$vmlinuz.tmp"

    log "making the root image ($ROOT_IMAGE_SIZE, sparse)"
    rm -f "$image.tmp"
    truncate -s "$ROOT_IMAGE_SIZE" "$image.tmp"
    mkfs.ext4 -q -F -L pgzfs-root -d "$root" "$image.tmp" || die "mkfs.ext4 -d failed"
    mv "$vmlinuz.tmp" "$vmlinuz"
    mv "$image.tmp" "$image"
    rm -rf "$root"
}

vm_build() {
    need_root
    mkdir -p "$CACHE"
    vm_deps
    resolve_versions
    local out=$CACHE/images/$KEY
    if [[ -f $out/root.img && -f $out/vmlinuz && -f $out/VERSIONS ]]; then
        log "image $KEY is cached"
    else
        local t0=$SECONDS
        mkdir -p "$out"
        fetch_debs
        [[ -f $out/modules/zfs.ko ]] || build_modules "$out/modules"
        build_root "$out/root.img" "$out/vmlinuz" "$out/modules"
        {
            echo "KERNEL=$KERNEL"
            echo "KERNEL_PKG_VERSION=$KERNEL_PKG_VERSION"
            echo "ZFS_VERSION=$ZFS_VERSION"
            echo "SUITE=$SUITE"
        } >"$out/VERSIONS"
        log "image $KEY built in $((SECONDS - t0)) s"
    fi
    ln -sfn "images/$KEY" "$CACHE/current"
    printf '%s\n' "$out"
}

# --------------------------------------------------------------------------
# up / ssh / put / down / status
# --------------------------------------------------------------------------

# free_port: a TCP port nothing on 127.0.0.1 listens on now.
free_port() {
    local p i
    for ((i = 0; i < 50; i++)); do
        p=$((20000 + RANDOM % 30000))
        if ! ss -Hltn "sport = :$p" | grep . >/dev/null; then
            printf '%s\n' "$p"
            return 0
        fi
    done
    die "found no free port"
}

ssh_opts() {
    local dir=$1
    printf '%s\n' -F /dev/null -o BatchMode=yes -o StrictHostKeyChecking=yes \
        -o "UserKnownHostsFile=$dir/known_hosts" -o IdentitiesOnly=yes -o "IdentityFile=$dir/id_ed25519" \
        -o ConnectTimeout=10 -o ServerAliveInterval=15 -o ServerAliveCountMax=8 -o LogLevel=ERROR \
        -p "$(cat "$dir/ssh_port")"
}

guest_ssh() {
    local dir=$1
    shift
    local opts
    mapfile -t opts < <(ssh_opts "$dir")
    # shellcheck disable=SC2029 # the command is meant to be expanded here and run there
    ssh "${opts[@]}" root@127.0.0.1 "$@"
}

# qemu_pid DIR: the pid of DIR's guest if it is running (checked against its
# command line, so a reused pid is never taken for it).
qemu_pid() {
    local dir=$1 pid
    [[ -f $dir/qemu.pid ]] || return 1
    pid=$(cat "$dir/qemu.pid")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -F -- "$dir/qemu.pid" >/dev/null || return 1
    printf '%s\n' "$pid"
}

vm_up() {
    need_root
    local dir="" mem=2048
    while (($#)); do
        case $1 in
            --mem) mem=${2:?--mem needs a value}; shift 2 ;;
            -*) usage_error "unknown option $1" ;;
            *) [[ -z $dir ]] || usage_error "unexpected argument $1"; dir=$(dir_arg "$1"); shift ;;
        esac
    done
    [[ -n $dir ]] || usage_error "up needs DIR"
    [[ $mem =~ ^[0-9]+$ ]] || usage_error "--mem must be a number of MiB"
    local image=$CACHE/current
    [[ -f $image/root.img && -f $image/vmlinuz ]] ||
        die "no guest image in $CACHE: run scripts/openzfs-vm build first (~10 minutes from scratch)"
    find_qemu || die "no qemu-system-x86_64: run scripts/openzfs-vm deps"
    if qemu_pid "$dir" >/dev/null; then die "a guest for $dir is already running"; fi
    mkdir -p "$dir"
    chmod 0700 "$dir"
    rm -f "$dir"/{id_ed25519,id_ed25519.pub,host_key,host_key.pub,known_hosts,config.tar,qemu.pid,console.log}
    local kernel_version
    kernel_version=$(sed -n 's/^KERNEL=//p' "$image/VERSIONS")

    # Fresh keys for this lab; the guest's host key is pinned before it boots.
    ssh-keygen -q -t ed25519 -N '' -C pgzfs-vm-client -f "$dir/id_ed25519"
    ssh-keygen -q -t ed25519 -N '' -C pgzfs-vm-host -f "$dir/host_key"
    local cfg
    cfg=$(mktemp -d)
    cp "$dir/host_key" "$cfg/ssh_host_ed25519_key"
    cp "$dir/host_key.pub" "$cfg/ssh_host_ed25519_key.pub"
    cp "$dir/id_ed25519.pub" "$cfg/authorized_keys"
    # A tar archive is a fine disk: the guest reads it with tar -xf /dev/vdX.
    tar -cf "$dir/config.tar" -C "$cfg" .
    rm -rf "$cfg"
    truncate -s "$POOL_DISK_SIZE" "$dir/pool1.img" "$dir/pool2.img"

    local t0=$SECONDS boot
    for boot in 1 2; do
        start_qemu "$dir" "$image" "$mem" "$kernel_version"
        if wait_for_guest_ssh "$dir"; then
            break
        fi
        # A TCG guest now and then hangs early in the kernel's boot (seen in CI: the
        # console stopped for good at "clocksource: Switched to clocksource hpet").
        # Nothing of the lab is in the guest yet, so booting it again is safe.
        ((boot < 2)) || die "the guest's boot stalled twice (console: $dir/console.log)"
        log "the guest's boot stalled for ${BOOT_STALL} s at: $(tail -n 1 "$dir/console.log"); booting it again"
        stop_qemu "$dir"
        mv "$dir/console.log" "$dir/console.stalled.log"
        rm -f "$dir/pool1.img" "$dir/pool2.img"
        truncate -s "$POOL_DISK_SIZE" "$dir/pool1.img" "$dir/pool2.img"
    done
    guest_ssh "$dir" 'test -e /dev/zfs' </dev/null ||
        die "the guest has no /dev/zfs: the ZFS module did not load (console: $dir/console.log)"
    log "guest up after $((SECONDS - t0)) s: scripts/openzfs-vm ssh $dir"
}

# A boot whose console has said nothing new for this long has hung: a normal boot
# reaches ssh in about 32 s and prints all along the way.
# (PGZFS_VM_BOOT_STALL: shorter, to try the second boot by hand.)
BOOT_STALL=${PGZFS_VM_BOOT_STALL:-120}

# start_qemu DIR IMAGE MEM KERNEL_VERSION: boot the guest (daemonized) on a free
# port; DIR/qemu.pid, DIR/ssh_port and DIR/known_hosts describe it.
start_qemu() {
    local dir=$1 image=$2 mem=$3 kernel_version=$4 port attempt
    for attempt in 1 2 3; do
        port=$(free_port)
        printf '[127.0.0.1]:%s %s\n' "$port" "$(cut -d' ' -f1,2 "$dir/host_key.pub")" >"$dir/known_hosts"
        echo "$port" >"$dir/ssh_port"
        log "booting the guest ($kernel_version, TCG, ${mem} MiB, ssh on 127.0.0.1:$port)"
        # romfile= (none): the guest boots from -kernel, so the NIC needs no PXE
        # option ROM, and qemu-system-x86 installed without its Recommends has none
        # (a fresh CI machine failed: 'failed to find romfile "efi-virtio.rom"').
        if "$QEMU" "${QEMU_DATA_ARGS[@]}" -name "pgzfs-vm" -nodefaults -no-user-config \
            -accel tcg,thread=multi -cpu max -smp 2 -m "$mem" \
            -kernel "$image/vmlinuz" \
            -append "console=ttyS0 root=/dev/nvme0n1 rootfstype=ext4 rw init=/sbin/pgzfs-init net.ifnames=0 panic=-1" \
            -no-reboot -display none -serial "file:$dir/console.log" -monitor none \
            -drive "file=$image/root.img,if=none,id=root,format=raw,snapshot=on" \
            -device nvme,drive=root,serial=pgzfsroot \
            -drive "file=$dir/pool1.img,if=none,id=pool1,format=raw,cache=unsafe" \
            -device virtio-blk-pci,drive=pool1,serial=pgzfs-pool1 \
            -drive "file=$dir/pool2.img,if=none,id=pool2,format=raw,cache=unsafe" \
            -device virtio-blk-pci,drive=pool2,serial=pgzfs-pool2 \
            -drive "file=$dir/config.tar,if=none,id=config,format=raw,readonly=on" \
            -device virtio-blk-pci,drive=config,serial=pgzfs-config \
            -netdev "user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:$port-:22" \
            -device virtio-net-pci,netdev=net0,romfile= \
            -daemonize -pidfile "$dir/qemu.pid" 2>"$dir/qemu.err"; then
            break
        fi
        # Another process took the port between the check and QEMU's bind.
        grep -i 'hostfwd' "$dir/qemu.err" >/dev/null && [[ $attempt -lt 3 ]] && continue
        cat "$dir/qemu.err" >&2
        die "QEMU did not start"
    done
    local pid
    pid=$(qemu_pid "$dir") || die "QEMU started but left no pid file"
    mkdir -p "$REGISTRY"
    echo "$dir" >"$REGISTRY/$pid"
}

# wait_for_guest_ssh DIR: until the guest answers over ssh. Fails (returns 1) when
# the console has been silent for BOOT_STALL seconds; dies when QEMU is gone or
# after 300 s.
wait_for_guest_ssh() {
    local dir=$1 t0=$SECONDS size last_size=-1 last_change=$SECONDS
    until guest_ssh "$dir" true </dev/null >/dev/null 2>&1; do
        if ! qemu_pid "$dir" >/dev/null; then
            tail -n 30 "$dir/console.log" >&2
            die "the guest died while booting (console: $dir/console.log)"
        fi
        size=$(stat -c %s "$dir/console.log" 2>/dev/null || echo 0)
        if ((size != last_size)); then
            last_size=$size
            last_change=$SECONDS
        elif ((SECONDS - last_change > BOOT_STALL)); then
            return 1
        fi
        if ((SECONDS - t0 > 300)); then
            tail -n 30 "$dir/console.log" >&2
            die "no ssh from the guest after 300 s (console: $dir/console.log)"
        fi
        sleep 1
    done
}

# stop_qemu DIR: the guest's QEMU gone (TERM, then KILL after 10 s).
stop_qemu() {
    local dir=$1 pid i
    pid=$(qemu_pid "$dir") || return 0
    kill "$pid"
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        kill -KILL "$pid"
    fi
    rm -f "$REGISTRY/$pid"
}

vm_ssh() {
    (($# >= 1)) || usage_error "ssh needs DIR"
    local dir
    dir=$(dir_arg "$1")
    shift
    [[ -f $dir/ssh_port ]] || die "$dir has no guest (scripts/openzfs-vm up $dir)"
    guest_ssh "$dir" "$@"
}

vm_put() {
    (($# == 3 || $# == 4)) || usage_error "put needs DIR LOCAL_FILE GUEST_PATH [MODE]"
    local dir file=$2 dest=$3 mode=${4:-0755}
    dir=$(dir_arg "$1")
    [[ -f $file ]] || die "no file $file"
    [[ $dest =~ ^/[A-Za-z0-9._/-]+$ ]] || usage_error "GUEST_PATH must be an absolute plain path"
    [[ $mode =~ ^[0-7]{3,4}$ ]] || usage_error "MODE must be octal"
    guest_ssh "$dir" "mkdir -p \$(dirname $dest) && cat >$dest.tmp && chmod $mode $dest.tmp && mv $dest.tmp $dest" <"$file"
}

# vm_put_lab DIR: scripts/lab with scripts/lab.d (and scripts/openzfs-vm for
# its usage lines) into the guest, where `lab vm guest-lab` and
# `lab vm guest-record-fixtures` run.
GUEST_LAB=/usr/local/lib/pgzfs-lab/lab
vm_put_lab() {
    local dir=$1
    tar -C "$SCRIPTS_DIR" -cf - lab lab.d openzfs-vm |
        guest_ssh "$dir" "rm -rf ${GUEST_LAB%/*} && mkdir -p ${GUEST_LAB%/*} && tar -xf - -C ${GUEST_LAB%/*}"
}

vm_down() {
    (($# == 1)) || usage_error "down takes exactly one argument, DIR"
    local dir pid
    dir=$(dir_arg "$1")
    if pid=$(qemu_pid "$dir"); then
        stop_qemu "$dir"
        log "guest $pid stopped"
    fi
    # Only what `up` made; DIR itself may hold the caller's files.
    rm -f "$dir"/{pool1.img,pool2.img,config.tar,qemu.pid,ssh_port,host_key,host_key.pub}
}

vm_down_all() {
    (($# == 0)) || usage_error "down-all takes no arguments"
    local f
    for f in "$REGISTRY"/*; do
        [[ -f $f ]] || continue
        vm_down "$(cat "$f")"
        rm -f "$f"
    done
}

vm_status() {
    local dir pid f
    if (($# == 1)); then
        dir=$(dir_arg "$1")
        if pid=$(qemu_pid "$dir"); then
            echo "running: pid $pid, ssh 127.0.0.1:$(cat "$dir/ssh_port")"
            return 0
        fi
        echo "not running"
        return 1
    fi
    if [[ -f $CACHE/current/VERSIONS ]]; then
        echo "image: $(readlink -f "$CACHE/current")"
        sed 's/^/  /' "$CACHE/current/VERSIONS"
    else
        echo "image: none (scripts/openzfs-vm build)"
    fi
    for f in "$REGISTRY"/*; do
        [[ -f $f ]] || continue
        dir=$(cat "$f")
        if qemu_pid "$dir" >/dev/null; then
            echo "guest: pid ${f##*/} for $dir"
        else
            rm -f "$f"
        fi
    done
}

# --------------------------------------------------------------------------
# lab: run on the host, it sets up a pgzfs lab inside the guest (guest-lab)
# --------------------------------------------------------------------------

vm_lab() {
    (($# >= 1)) || usage_error "lab needs DIR"
    local dir
    dir=$(dir_arg "$1")
    shift
    vm_put_lab "$dir"
    guest_ssh "$dir" "$GUEST_LAB" vm guest-lab "$@" </dev/null
}

PG_BIN=/usr/lib/postgresql/15/bin

# guest-lab [--scale N] [--backend B]: inside the guest only.
vm_guest_lab() {
    local scale=1 backend=cli
    while (($#)); do
        case $1 in
            --scale) scale=${2:?}; shift 2 ;;
            --backend) backend=${2:?}; shift 2 ;;
            *) usage_error "unknown argument $1" ;;
        esac
    done
    [[ $scale =~ ^[1-9][0-9]*$ ]] || usage_error "--scale must be a positive integer"
    [[ $backend =~ ^(cli|lzc|auto)$ ]] || usage_error "--backend must be cli, lzc or auto"
    [[ $(hostname) == pgzfs-guest ]] || die "guest-lab runs inside the guest only"
    # runuser postgres cannot stay in root's home.
    cd /
    local lab=/lab
    [[ ! -e $lab/lab.env ]] || die "the guest already has a lab"
    mkdir -p "$lab"

    zpool create -f -m none pgzfs1 /dev/disk/by-id/virtio-pgzfs-pool1
    zpool create -f -m none pgzfs2 /dev/disk/by-id/virtio-pgzfs-pool2
    # 16k records as the README recommends for PostgreSQL.
    zfs create -o recordsize=16k -o mountpoint=$lab/db1 pgzfs1/db1
    install -d -o postgres -g postgres -m 0700 $lab/db1/data
    install -d -o postgres -g postgres -m 0755 $lab/sock $lab/sock2
    install -o postgres -g postgres -m 0640 /dev/null $lab/db1.log
    install -o postgres -g postgres -m 0640 /dev/null $lab/db2.log

    # root reaches the guest's own sshd with a key of its own, host key pinned.
    install -d -m 0700 $lab/ssh
    ssh-keygen -q -t ed25519 -N '' -C pgzfs-lab-client -f $lab/ssh/id_ed25519
    cat $lab/ssh/id_ed25519.pub >>/root/.ssh/authorized_keys
    printf '127.0.0.1 %s\n' "$(cut -d' ' -f1,2 /etc/ssh/ssh_host_ed25519_key.pub)" >$lab/ssh/known_hosts

    runuser -u postgres -- $PG_BIN/initdb -D $lab/db1/data -U postgres --locale=C --encoding=UTF8 \
        --auth-local=trust --auth-host=scram-sha-256 >$lab/initdb.log 2>&1 || die "initdb failed"
    cat >>$lab/db1/data/postgresql.conf <<EOF

# --- pgzfs OpenZFS lab ---
port = 5432
listen_addresses = '127.0.0.1'
unix_socket_directories = '$lab/sock'
wal_level = replica
max_wal_senders = 10
max_replication_slots = 10
hot_standby = on
shared_buffers = 32MB
max_connections = 30
EOF
    printf '%s\n' 'local all all trust' 'host all all 127.0.0.1/32 scram-sha-256' \
        'host replication all 127.0.0.1/32 scram-sha-256' >$lab/db1/data/pg_hba.conf
    # TCG is slow: give every start plenty of time.
    runuser -u postgres -- $PG_BIN/pg_ctl -w -t 300 -D $lab/db1/data -l $lab/db1.log start >/dev/null ||
        die "db1 did not start (see $lab/db1.log)"
    local password
    password=$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')
    {
        echo "CREATE ROLE replicator LOGIN REPLICATION PASSWORD '$password';"
        echo "GRANT pg_monitor TO replicator;"
        echo "GRANT EXECUTE ON FUNCTION pg_backup_start(text, boolean) TO replicator;"
        echo "GRANT EXECUTE ON FUNCTION pg_backup_stop(boolean) TO replicator;"
        echo "GRANT EXECUTE ON FUNCTION pg_promote(boolean, integer) TO replicator;"
    } | $PG_BIN/psql -X -q -v ON_ERROR_STOP=1 -h $lab/sock -U postgres -d postgres -f - ||
        die "creating the replication role failed"
    (
        umask 077
        printf '127.0.0.1:*:*:replicator:%s\n*:*:replication:replicator:%s\n' "$password" "$password" >$lab/pgpass
    )
    chown postgres:postgres $lab/pgpass
    runuser -u postgres -- $PG_BIN/pgbench -i -q -s "$scale" -h $lab/sock -U postgres postgres \
        >$lab/pgbench-init.log 2>&1 || die "pgbench -i failed (see $lab/pgbench-init.log)"

    cat >$lab/pgzfs.toml <<EOF
# pgzfs OpenZFS lab config, written by scripts/openzfs-vm guest-lab.
cluster = "ozlab"
log_file = "$lab/pgzfs.log"

[defaults]
pg_bin = "$PG_BIN"
pg_os_user = "postgres"
pg_user = "replicator"
pg_database = "postgres"
pg_passfile = "$lab/pgpass"
ssh_user = "root"
ssh_port = 22
ssh_key = "$lab/ssh/id_ed25519"
known_hosts = "$lab/ssh/known_hosts"
zfs_backend = "$backend"
# TCG runs 10-25x slower than native.
streaming_timeout = "300s"
lock_timeout = "60s"
EOF
    local node pool port sock
    for node in db1 db2; do
        pool=pgzfs${node#db}
        port=$((5431 + ${node#db}))
        sock=$lab/sock
        [[ $node == db2 ]] && sock=$lab/sock2
        cat >>$lab/pgzfs.toml <<EOF

[[nodes]]
name = "$node"
host = "127.0.0.1"
dataset = "$pool/$node"
data_dir = "$lab/$node/data"
mountpoint = "$lab/$node"
pg_port = $port
lock_file = "$lab/$node.lock"
pg_log_file = "$lab/$node.log"
[nodes.pg_settings]
unix_socket_directories = "$sock"
EOF
    done
    cat >$lab/lab.env <<EOF
LAB_DIR=$lab
CONFIG=$lab/pgzfs.toml
PGPASSFILE=$lab/pgpass
PG_BIN=$PG_BIN
DB1_DATASET=pgzfs1/db1
DB2_DATASET=pgzfs2/db2
DB1_PORT=5432
DB2_PORT=5433
SOCK_DIR=$lab/sock
SOCK2_DIR=$lab/sock2
ZFS_VERSION=$(cat /sys/module/zfs/version)
EOF
    cat $lab/lab.env
}

vm_record_fixtures() {
    (($# == 2)) || usage_error "record-fixtures needs DIR and OUT_DIR"
    local dir out=$2 name
    dir=$(dir_arg "$1")
    mkdir -p "$out"
    vm_put_lab "$dir"
    guest_ssh "$dir" "$GUEST_LAB" vm guest-record-fixtures </dev/null
    for name in $(guest_ssh "$dir" ls /var/tmp/pgzfs-fixtures </dev/null); do
        [[ $name =~ ^[A-Za-z0-9._-]+$ ]] || die "unexpected file name from the guest: $name"
        guest_ssh "$dir" cat "/var/tmp/pgzfs-fixtures/$name" </dev/null >"$out/$name"
    done
    log "recorded $(find "$out" -type f | wc -l) files in $out"
}

# Inside the guest: the outputs the parsers are tested against, on a scratch
# pool on a file.  Snapshots are named as pgzfs names them; the streams are
# cut short with head(1) to leave resume tokens.
vm_guest_record_fixtures() {
    [[ $(hostname) == pgzfs-guest ]] || die "guest-record-fixtures runs inside the guest only"
    local out=/var/tmp/pgzfs-fixtures a=tank/pgdata@pgzfs-20261122T003000Z b=tank/pgdata@pgzfs-20261122T013000Z
    rm -rf "$out"
    mkdir -p "$out"
    truncate -s 512M /var/tmp/tank.img
    zpool create -m none tank /var/tmp/tank.img
    zfs create -o recordsize=16k -o mountpoint=/tank/pgdata tank/pgdata
    dd if=/dev/urandom of=/tank/pgdata/a bs=1M count=8 2>/dev/null
    zfs snapshot "$a"
    dd if=/dev/urandom of=/tank/pgdata/b bs=1M count=2 2>/dev/null
    zfs snapshot "$b"
    zfs send >"$out/send-usage.txt" 2>&1 || true
    zfs get -H -o value receive_resume_token tank/pgdata >"$out/get-receive_resume_token-none.txt"
    zpool get -H -o value feature@bookmarks tank >"$out/zpool-get-feature-bookmarks-enabled.txt"
    { zfs send -L -e -c "$a" | head -c 3000000 | zfs receive -s tank/copy; } 2>/dev/null || true
    zfs get -H -o value receive_resume_token tank/copy >"$out/get-receive_resume_token.txt"
    zfs send -nv -t "$(cat "$out/get-receive_resume_token.txt")" >"$out/send-nvt-full.txt" 2>&1 || true
    zfs send "$a" | zfs receive tank/copy2
    { zfs send -w -i "@${a#*@}" "$b" | head -c 500000 | zfs receive -s tank/copy2; } 2>/dev/null || true
    zfs send -nv -t "$(zfs get -H -o value receive_resume_token tank/copy2)" >"$out/send-nvt-incremental.txt" 2>&1 || true
    zfs bookmark "$a" "tank/pgdata#${a#*@}"
    zpool get -H -o value feature@bookmarks tank >"$out/zpool-get-feature-bookmarks.txt"
    zfs get -H -p -r -o name,property,value type tank/pgdata >"$out/get-r-type-with-bookmark.txt"
    zfs hold pgzfs-db2 "$a"
    zfs holds -H "$a" >"$out/holds-H.txt"
    zfs get -H -o value written "$b" >"$out/get-written.txt"
    zfs version >"$out/zfs-version.txt"
    zpool destroy tank
    rm -f /var/tmp/tank.img
}

vm_main() {
    (($#)) || usage_error "a subcommand is needed"
    local sub=$1
    shift
    case $sub in
        deps) mkdir -p "$CACHE"; vm_deps "$@" ;;
        build) vm_build "$@" ;;
        up) vm_up "$@" ;;
        ssh) vm_ssh "$@" ;;
        put) vm_put "$@" ;;
        lab) vm_lab "$@" ;;
        guest-lab) vm_guest_lab "$@" ;;
        record-fixtures) vm_record_fixtures "$@" ;;
        guest-record-fixtures) vm_guest_record_fixtures "$@" ;;
        down) vm_down "$@" ;;
        down-all) vm_down_all "$@" ;;
        status) vm_status "$@" ;;
        -h | --help | help) sed -n 's/^#   \(scripts\/openzfs-vm .*\)/usage: \1/p' "$USAGE_OF" ;;
        *) usage_error "unknown subcommand $sub" ;;
    esac
}
