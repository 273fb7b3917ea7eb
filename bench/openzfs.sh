# shellcheck shell=bash disable=SC2154 # work, runs, rates, divergences, scales, quick come from bench/run
# bench/run --openzfs: sourced by bench/run after the release build, with its
# options parsed (scales, runs, rates, divergences, quick, work, out) and PGZFS, SSH2_BENCH,
# REPO, BENCH_DIR, log and die defined.  The measurements themselves run in
# the guest (bench/openzfs-guest); this side boots a guest per scale, copies
# the binaries in, collects what the guest prints and writes the report.

VM=$REPO/scripts/openzfs-vm
current_vm=""

openzfs_cleanup() {
    local rc=$?
    if [[ -n $current_vm ]]; then
        log "stopping the guest of $current_vm"
        "$VM" down "$current_vm" >/dev/null 2>&1 || log "warning: openzfs-vm down $current_vm failed"
    fi
    exit "$rc"
}

# vm_install DIR FILE GUEST_PATH [MODE]: FILE without its debug info into the guest.
vm_install() {
    local dir=$1 file=$2 dest=$3 mode=${4:-0755} tmp
    tmp=$dir/install.tmp
    objcopy --strip-debug "$file" "$tmp"
    "$VM" put "$dir" "$tmp" "$dest" "$mode"
    rm -f "$tmp"
}

bench_openzfs_scale() {
    local scale=$1 dir=$work/oz-s$1
    "$VM" down "$dir" >/dev/null 2>&1 || true
    rm -rf "$dir"
    mkdir -p "$dir"
    current_vm=$dir
    log "scale $scale: booting a guest"
    "$VM" up "$dir" >"$work/oz-up-$scale.log" 2>&1 || die "openzfs-vm up failed; see $work/oz-up-$scale.log"
    vm_install "$dir" "$PGZFS" /usr/local/bin/pgzfs
    vm_install "$dir" "$SSH2_BENCH" /usr/local/bin/ssh_throughput
    # The guest image has no rsync; the host's (the same Debian release) and the
    # one library the guest lacks for it.
    vm_install "$dir" "$(command -v rsync)" /usr/local/bin/rsync
    "$VM" put "$dir" /lib/x86_64-linux-gnu/libpopt.so.0 /usr/local/lib/libpopt.so.0 0644
    "$VM" ssh "$dir" 'ldconfig && rsync --version >/dev/null' </dev/null || die "rsync does not run in the guest"
    "$VM" put "$dir" "$BENCH_DIR/openzfs-guest" /usr/local/sbin/openzfs-guest
    log "scale $scale: guest lab (pgbench -i -s $scale)"
    local t0=$SECONDS
    "$VM" lab "$dir" --scale "$scale" >"$work/oz-lab-$scale.log" 2>&1 ||
        die "openzfs-vm lab failed; see $work/oz-lab-$scale.log"
    log "scale $scale: lab in $((SECONDS - t0)) s; measuring in the guest (log $work/oz-guest-$scale.log)"
    "$VM" ssh "$dir" /usr/local/sbin/openzfs-guest --scale "$scale" --runs "$runs" --rates "$rates" \
        --divergences "$divergences" \
        </dev/null >"$work/oz-out-$scale.txt" 2>"$work/oz-guest-$scale.log" ||
        die "the measurements in the guest failed; see $work/oz-guest-$scale.log"
    local kind name rest
    while IFS=$'\t' read -r kind name rest; do
        case $kind in
            R) printf '%s\t%s\n' "$name" "$rest" >>"$results" ;;
            J) [[ $name =~ ^[A-Za-z0-9.-]+$ ]] && printf '%s\n' "$rest" >"$work/$name.json" ;;
        esac
    done <"$work/oz-out-$scale.txt"
    if [[ -z ${zfs_version:-} ]]; then
        zfs_version=$("$VM" ssh "$dir" 'cat /sys/module/zfs/version' </dev/null)
        guest_kernel=$("$VM" ssh "$dir" 'uname -r' </dev/null)
        guest_pg=$("$VM" ssh "$dir" '/usr/lib/postgresql/15/bin/postgres --version' </dev/null)
        guest_ssh=$("$VM" ssh "$dir" 'ssh -V 2>&1' </dev/null)
    fi
    log "scale $scale: stopping the guest"
    "$VM" down "$dir" >/dev/null 2>&1 || log "warning: openzfs-vm down $dir failed"
    current_vm=""
    rm -rf "$dir"
}

bench_openzfs() {
    [[ -n $out ]] || out=$REPO/docs/benchmarks.md
    mkdir -p "$work"
    results=$work/results.tsv
    : >"$results"
    rm -f "$work"/full-*.json "$work"/inc*.json "$work"/rejoin-*.json
    trap openzfs_cleanup EXIT
    trap 'exit 130' INT TERM
    local started finished load_start load_end scale
    started=$(date -u '+%Y-%m-%d %H:%M UTC')
    load_start=$(cut -d' ' -f1-3 /proc/loadavg)
    IFS=, read -r -a scale_list <<<"$scales"
    for scale in "${scale_list[@]}"; do
        bench_openzfs_scale "$scale"
    done
    finished=$(date -u '+%Y-%m-%d %H:%M UTC')
    load_end=$(cut -d' ' -f1-3 /proc/loadavg)
    local machine zfs_note command
    machine="QEMU TCG guest (2 vCPUs, 2 GiB) on a host with load average $load_start at the start, $load_end at the end; $(nproc) CPUs ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)), Linux $(uname -r)"
    zfs_note="OpenZFS $zfs_version (kernel module, guest kernel $guest_kernel; pools on sparse files as virtio disks)"
    command="bench/run --openzfs --scales $scales --runs $runs"
    [[ $rates == 0.1,1,10 ]] || command+=" --rates $rates"
    [[ $divergences == 0,1,10 ]] || command+=" --divergences $divergences"
    python3 "$BENCH_DIR/report.py" --openzfs "$results" "$out" "$machine" "$zfs_note" "$guest_pg" "$guest_ssh" \
        "$started" "$finished" "$scales" "$runs" "$quick" "$command"
    log "wrote $out"
}
