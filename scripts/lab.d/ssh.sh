# shellcheck shell=bash
# scripts/lab, ssh: the lab's client key, its private sshds and the probes
# that log in as pgzfs would.
#
# Sourced by scripts/lab (never run by itself), which defines the constants
# (CLIENT_BIN, MARKER, LOCK_FILE, ...), log, die and usage_error.

# The client key pgzfs logs in with, authorized for root on every lab sshd.
make_client_key() {
    local ssh=$1
    mkdir -m 0700 "$ssh"
    ssh-keygen -q -t ed25519 -N '' -C "pgzfs-lab-client" -f "$ssh/id_ed25519"
    cp "$ssh/id_ed25519.pub" "$ssh/authorized_keys"
    chmod 0600 "$ssh/authorized_keys"
}

# prepare_sshd SSHD_DIR LISTEN PORT AUTHORIZED_KEYS WHERE: a host key and a
# config for one lab sshd, checked but not started.  SSHD_DIR may already exist
# (loopback mode keeps the client key there too).
prepare_sshd() {
    local sshd_dir=$1 listen=$2 port=$3 authorized=$4 where=$5 use_pam=no
    [[ -d $sshd_dir ]] || mkdir -m 0700 "$sshd_dir"
    ssh-keygen -q -t ed25519 -N '' -C "pgzfs-lab-host" -f "$sshd_dir/ssh_host_ed25519_key"

    # With UsePAM no, sshd refuses every login to an account whose password
    # field starts with "!" (locked), keys included; some images ship root that
    # way.  PAM does not apply that rule, so fall back to it there only.
    if [[ $(getent shadow root | cut -d: -f2) == '!'* ]]; then
        log "note: root's password is locked; the lab sshd uses PAM so key logins still work"
        use_pam=yes
    fi

    cat >"$sshd_dir/sshd_config" <<EOF
# pgzfs lab sshd: $where only, keys only, nothing shared with the system sshd.
ListenAddress $listen
Port $port
HostKey $sshd_dir/ssh_host_ed25519_key
PidFile $sshd_dir/sshd.pid
AuthorizedKeysFile $authorized
AllowUsers root
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
# The lab's files are not laid out the way StrictModes wants (e.g. /tmp).
StrictModes no
UsePAM $use_pam
PrintMotd no
X11Forwarding no
LogLevel VERBOSE
# A lab host stands in for a server, whose root does not set up an interactive
# profile for every command.  Debian's bash sources ~/.bashrc for each command
# sshd starts while SHLVL is below 2; a developer machine's ~/.bashrc (pyenv
# init here) made every remote command 0.2 s slower, ten times per re-seed and
# twice per raw pipeline.  Commands get sshd's own PATH.
SetEnv SHLVL=1
# pgzfs opens several connections and channels at once.
MaxStartups 100
MaxSessions 50
Subsystem sftp internal-sftp
EOF
    # sshd insists on its privilege-separation directory.
    mkdir -p /run/sshd
    chmod 0755 /run/sshd
    /usr/sbin/sshd -t -f "$sshd_dir/sshd_config" || die "sshd rejected $sshd_dir/sshd_config"
}

# start_sshd SSHD_DIR [NAMESPACE]
start_sshd() {
    ns_prefix "${2:-}"
    # Absolute path: sshd re-executes itself and refuses a relative one.  Its
    # std fds go to /dev/null so that it never holds a caller's pipe open.
    "${NS_RUN[@]}" /usr/sbin/sshd -f "$1/sshd_config" -E "$1/sshd.log" </dev/null >/dev/null 2>&1
}

# The "type key" part of a host's public key, for known_hosts.
host_key() { cut -d' ' -f1,2 "$1/ssh_host_ed25519_key.pub"; }

# ssh_probe DIR HOST PORT QUIET [NAMESPACE]: log in as pgzfs would, with the
# lab key and strict host key checking against the lab's known_hosts.
ssh_probe() {
    local dir=$1 host=$2 port=$3
    ns_prefix "${5:-}"
    local -a probe=("${NS_RUN[@]}" ssh -F /dev/null -o BatchMode=yes -o StrictHostKeyChecking=yes
        -o UserKnownHostsFile="$dir/ssh/known_hosts" -o IdentitiesOnly=yes -o ConnectTimeout=5
        -i "$dir/ssh/id_ed25519" -p "$port" "root@$host" true)
    # Not 2>/dev/stderr: that reopens the caller's stderr, and a caller
    # logging to a file (2>file) had that file truncated by every loud probe.
    if [[ $4 == quiet ]]; then
        "${probe[@]}" </dev/null >/dev/null 2>/dev/null
    else
        "${probe[@]}" </dev/null >/dev/null
    fi
}

# wait_ssh DIR HOST PORT [NAMESPACE]: up to 10 s for a fresh sshd to answer.
wait_ssh() {
    local i
    for ((i = 0; i < 40; i++)); do
        if ssh_probe "$1" "$2" "$3" quiet "${4:-}"; then return 0; fi
        sleep 0.25
    done
    ssh_probe "$1" "$2" "$3" loud "${4:-}" || die "ssh to root@$2:$3 with the lab key failed"
}

# ssh_check DIR PORT [quiet]: the loopback lab's sshd.
ssh_check() {
    ssh_probe "$1" 127.0.0.1 "$2" "${3:-loud}"
}
