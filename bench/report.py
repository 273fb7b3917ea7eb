#!/usr/bin/env python3
"""Turn bench/run's measurements (results.tsv) into a table and docs/benchmarks.md.

Called by bench/run; kept separate so a report can be rebuilt from a saved
results.tsv without measuring again:

    bench/report.py RESULTS OUT MACHINE ZFS PG SSH STARTED FINISHED SCALES RUNS QUICK
    bench/report.py --openzfs RESULTS OUT MACHINE ZFS PG SSH STARTED FINISHED SCALES RUNS QUICK COMMAND

The second form (bench/run --openzfs) writes only the OpenZFS section of OUT,
between the two markers below, and leaves the rest of OUT as it is; the first
form rewrites OUT and carries an existing OpenZFS section over unchanged.
"""

import glob
import json
import os
import statistics
import subprocess
import sys
from collections import defaultdict

RATES = ["0.1", "1", "10"]
OZ_BEGIN = "<!-- bench/run --openzfs: begin (generated; bench/notes-openzfs.md is included verbatim) -->"
OZ_END = "<!-- bench/run --openzfs: end -->"


def openzfs_block(path):
    """The OpenZFS section of an existing report, markers included, or None."""
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        return None
    start, end = text.find(OZ_BEGIN), text.find(OZ_END)
    if start < 0 or end < start:
        return None
    return text[start:end + len(OZ_END)]


def load(path):
    data = defaultdict(lambda: defaultdict(list))
    with open(path) as f:
        for line in f:
            scale, metric, _run, value = line.rstrip("\n").split("\t")
            data[int(scale)][metric].append(float(value))
    return data


def med(d, metric):
    values = d.get(metric)
    return statistics.median(values) if values else None


def fmt(x, digits=2):
    return "n/a" if x is None else f"{x:.{digits}f}"


def ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


# The raw pipeline's parts, in the order it runs them (bench/run and
# bench/openzfs-guest record the same metrics).
RAW_PARTS = ["stop", "snapshot", "sendrecv", "config", "start", "catchup"]
RAW_PARTS_HEADER = ("| scale | change | pg_ctl stop (s) | ssh zfs snapshot (s) | send/recv (s) | standby config (s) "
                    "| pg_ctl start (s) | until streaming (s) |",
                    "|---|---|---|---|---|---|---|---|")


def raw_parts_row(d, scale, rate):
    """One row of the raw pipeline's parts table: the median seconds of each part."""
    return f"| {scale} | {rate}% | " + " | ".join(fmt(med(d, f"inc{rate}_raw_{part}_s")) for part in RAW_PARTS) + " |"


# (h): pg_wal left home (pg_wal on a child dataset of its own).
HOME_HEADER = ("| scale | re-seed | stream, pg_wal home | stream had pg_wal been sent | pg_wal's share "
               "| wall, pg_wal home (s) | wall, pg_wal sent (s) |",
               "|---|---|---|---|---|---|---|")


def home_rows(d, scale, full_bytes, full_secs):
    """The (h) rows of one scale: the full re-seed with pg_wal home and sent, then
    every incremental with the size of pg_wal's own stream between the same cuts."""
    mib1 = lambda b: fmt(b / 2**20 if b is not None else None, 1)
    sent = med(d, "full_sendwal_bytes")
    share = ratio(sent - full_bytes, sent) if sent is not None and full_bytes is not None else None
    rows = [f"| {scale} | full | {mib1(full_bytes)} MiB | {mib1(sent)} MiB | "
            f"{fmt(share * 100 if share is not None else None, 0)}% | {fmt(full_secs)} | "
            f"{fmt(med(d, 'full_sendwal_s'))} |"]
    for rate in RATES:
        b, w = med(d, f"inc{rate}_bytes"), med(d, f"inc{rate}_wal_home_bytes")
        if b is None or w is None:
            continue
        rows.append(f"| {scale} | incr. {rate}% | {mib1(b)} MiB | {mib1(b + w)} MiB | "
                    f"{fmt(ratio(w, b + w) * 100 if b + w else None, 0)}% | - | - |")
    return rows


# (g): rejoin against pg_rewind + restart after a failover.
REJOIN_HEADER = ("| scale | diverged writes | pgzfs rejoin (s) | pg_rewind + restart (s) | rejoin/pg_rewind "
                 "| bytes: rejoin / pg_rewind |",
                 "|---|---|---|---|---|---|")


def rejoin_results(d, scale):
    """The (g) rows of one scale, and (divergence, ratio) for each divergence measured."""
    rows, ratios = [], []
    divergences = sorted({m[2:].split("_")[0] for m in d if m.startswith("rj")}, key=float)
    for div in divergences:
        rj, rw = med(d, f"rj{div}_rejoin_s"), med(d, f"rj{div}_rewind_s")
        rjb, rwb = med(d, f"rj{div}_rejoin_bytes"), med(d, f"rj{div}_rewind_bytes")
        rows.append(f"| {scale} | {div}% | {fmt(rj)} | {fmt(rw)} | {fmt(ratio(rj, rw))} | "
                    f"{fmt(rjb / 2**20 if rjb is not None else None, 1)} / "
                    f"{fmt(rwb / 2**20 if rwb is not None else None, 1)} MiB |")
        ratios.append((div, ratio(rj, rw)))
    return rows, ratios


def step_medians(workdir, pattern):
    """Median seconds per reset-secondary step over the saved --json summaries."""
    per_step = defaultdict(list)
    for path in glob.glob(os.path.join(workdir, pattern)):
        with open(path) as f:
            for name, secs in json.load(f)["steps"].items():
                per_step[name].append(secs)
    return {k: statistics.median(v) for k, v in per_step.items()}


STEP_ORDER = ["preflight", "datasets", "lock", "primary lock", "slot", "backup start", "snapshot", "backup stop",
              "backup record", "postgres stop", "send/receive", "standby config", "postgres start",
              "catch-up", "holds"]


def draw_plot(rows, out):
    """A PNG of re-seed time against database size at 1% change, one line per
    contender, next to the report; its file name, or None with fewer than two sizes."""
    rows = [r for r in rows if r[0] is not None]
    if len(rows) < 2:
        return None
    base = os.path.splitext(os.path.abspath(out))[0]
    data, png = base + "-scale.dat", base + "-scale.png"
    with open(data, "w") as f:
        f.write("# DB_GiB pgzfs_backup pgzfs_atomic raw rsync basebackup_pool basebackup_ext4\n")
        for row in sorted(rows):
            f.write(" ".join("NaN" if v is None else f"{v:.4f}" for v in row) + "\n")
    titles = ["pgzfs, cut = backup", "pgzfs, cut = atomic", "raw pipeline, standby streaming",
              "rsync (no restart)", "pg_basebackup, same pool", "pg_basebackup, ext4"]
    series = ", ".join(f"'{data}' using 1:{i + 2} with linespoints title '{t}'" for i, t in enumerate(titles))
    script = "\n".join([
        "set terminal pngcairo size 900,560" if has_pngcairo() else "set terminal png size 900,560",
        f"set output '{png}'",
        "set termoption noenhanced",
        "set title 'Re-seed time against database size, 1% of the blocks changed'",
        "set xlabel 'database size (GiB)'",
        # From seconds to a quarter of an hour: on a linear axis the fast contenders
        # would all lie on the floor.
        "set logscale y",
        "set ylabel 'wall time to a streaming standby (s, log scale)'",
        "set key top left",
        "set grid",
        "set datafile missing 'NaN'",
        f"plot {series}",
    ])
    try:
        subprocess.run(["gnuplot"], input=script, text=True, check=True)
    except (OSError, subprocess.CalledProcessError) as e:
        print(f"report: no plot ({e}); install gnuplot-nox (scripts/install-deps)", file=sys.stderr)
        return None
    os.remove(data)
    return os.path.basename(png)


def has_pngcairo():
    try:
        out = subprocess.run(["gnuplot", "-e", "set terminal"], capture_output=True, text=True).stderr
    except OSError:
        return False
    return "pngcairo" in out


def layout_note(data):
    """How the lab's primary was laid out and its pool made, as bench/run recorded it."""
    tree = any(med(d, "layout_tree") for d in data.values())
    compressed = any(med(d, "compression_on") for d in data.values())
    lean = sorted(s for s, d in data.items() if med(d, "lean"))
    return ("pg_wal on its own child dataset of db1 (128k records), as the README lays a primary out"
            if tree else "pg_wal inside db1's dataset") + \
        ("; the pool compressed (compression=on, lzjb), inherited by every dataset" if compressed
         else "; the pool uncompressed") + \
        (f"; lean at scale {', '.join(map(str, lean))} (only the full re-seeds and the incrementals)"
         if lean else "")


def remote_command_note(data):
    """What one remote command cost on this machine, where bench/run measured it."""
    each = [v for d in data.values() for v in d.get("remote_command_s", [])]
    if not each:
        return []
    return [f"- one remote command (`ssh db1 true` as a session of an open connection) took "
            f"{statistics.median(each):.3f} s (median of {len(each)}): a session, and root's login "
            "shell on the other side. Every remote zfs call of a re-seed pays it once, the raw "
            "pipeline's two ssh calls pay it twice."]


def main():
    (results, out, machine, zfs_note, pg_version, ssh_note, started, finished,
     scales, runs, quick) = sys.argv[1:12]
    data = load(results)
    workdir = os.path.dirname(os.path.abspath(results))
    lines = []
    targets = []

    # (b) + (e): full re-seed
    full = ["| scale | DB size | pgzfs full stream | pg_basebackup copied | pg_basebackup, same pool (s) "
            "| pg_basebackup, ext4 (s) | pgzfs, cut = backup (s) | pgzfs, cut = atomic (s) "
            "| backup/basebackup (pool) | atomic/basebackup (pool) | pgzfs peak RSS |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    # (a) + (c): incremental
    inc = ["| scale | change | changed (stream/full) | pgzfs, cut = backup (s) | pgzfs, cut = atomic (s) "
           "| raw pipeline, standby streaming (s) | backup/raw | atomic/raw | rsync (s) | pg_basebackup (pool)/pgzfs backup "
           "| bytes moved: backup / atomic / raw / rsync |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    # (d): data path
    dp = ["| scale | stream | OpenSSH default (MiB/s) | ssh2 (MiB/s) | ssh2/OpenSSH | OpenSSH aes128-gcm (MiB/s) |",
          "|---|---|---|---|---|---|"]
    raw_parts = list(RAW_PARTS_HEADER)
    # pgzfs's own full re-seed with each ssh_data_path (bench/run --ssh-data-path both).
    e2e = ["| scale | ssh_data_path | full re-seed wall (s) | send/receive throughput (MiB/s) |",
           "|---|---|---|---|"]
    # (f): transport options, full re-seeds at the first scale.
    transport = ["| scale | option | full re-seed wall (s) | send/receive throughput (MiB/s) | against |",
                 "|---|---|---|---|---|"]
    rejoin = list(REJOIN_HEADER)
    home = list(HOME_HEADER)
    worst_rss = None
    # For the plot: (DB GiB, seconds per contender at 1% change).
    plot_rows = []
    for scale in sorted(data):
        d = data[scale]
        db = med(d, "db_bytes")
        f_bb_ext4 = med(d, "full_basebackup_s")
        # The fair anchor: pg_basebackup into a dataset of the same pool. Reports
        # from before it existed fall back to ext4.
        f_bb = med(d, "full_basebackup_zfs_s")
        if f_bb is None:
            f_bb = f_bb_ext4
        f_atomic = med(d, "full_atomic_s")
        bb_bytes = med(d, "full_basebackup_zfs_bytes") or med(d, "full_basebackup_bytes")
        f_ssh2, f_openssh = med(d, "full_pgzfs_ssh2_s"), med(d, "full_pgzfs_openssh_s")
        # The shipped default data path is openssh; without its runs, the main runs.
        f_pgzfs = f_openssh if f_openssh is not None else med(d, "full_pgzfs_s")
        f_bytes = med(d, "full_bytes")
        rss = max(d.get("rss_full_KiB", []) + d.get("rss_inc_KiB", []), default=None)
        if rss is not None:
            worst_rss = rss if worst_rss is None else max(worst_rss, rss)
        mib = lambda b: fmt(b / 2**20 if b is not None else None, 0)
        # A scale merged in from a run that skipped a part gets no row of n/a for it.
        if f_bytes is not None or f_bb is not None:
            full.append(f"| {scale} | {mib(db)} MiB | {mib(f_bytes)} MiB | {mib(bb_bytes)} MiB | {fmt(f_bb)} | "
                    f"{fmt(f_bb_ext4)} | {fmt(f_pgzfs)} | {fmt(f_atomic)} | {fmt(ratio(f_pgzfs, f_bb))} | "
                    f"{fmt(ratio(f_atomic, f_bb))} | {fmt(rss / 1024 if rss else None, 1)} MiB |")
        for mode, secs in (("backup", f_pgzfs), ("atomic", f_atomic)):
            r = ratio(secs, f_bb)
            targets.append((f"Full re-seed <= 1.0x pg_basebackup into the same pool (cut = {mode})",
                            f"scale {scale}", f"{fmt(r)}x", r is not None and r <= 1.0))
        for rate in RATES:
            p = med(d, f"inc{rate}_pgzfs_s")
            pa = med(d, f"inc{rate}_atomic_s")
            raw = med(d, f"inc{rate}_raw_s")
            rs = med(d, f"inc{rate}_rsync_s")
            b = med(d, f"inc{rate}_bytes")
            moved = " / ".join(fmt(x / 2**20 if x is not None else None, 1) for x in (
                b, med(d, f"inc{rate}_atomic_bytes"), med(d, f"inc{rate}_raw_bytes"),
                med(d, f"inc{rate}_rsync_bytes"))) + " MiB"
            changed = ratio(b, f_bytes)
            if p is None and pa is None and raw is None:
                continue
            inc.append(f"| {scale} | {rate}% | {fmt(changed * 100 if changed is not None else None, 2)}% | "
                       f"{fmt(p)} | {fmt(pa)} | {fmt(raw)} | {fmt(ratio(p, raw))} | {fmt(ratio(pa, raw))} | "
                       f"{fmt(rs)} | {fmt(ratio(f_bb, p), 1)}x | {moved} |")
            if rate == "1":
                plot_rows.append((db / 2**30 if db else None, p, pa, raw, rs, f_bb, f_bb_ext4))
            raw_parts.append(raw_parts_row(d, scale, rate))
            if rate == "1":
                for mode, secs in (("backup", p), ("atomic", pa)):
                    r = ratio(secs, raw)
                    targets.append((f"Incremental at 1%, no pre-checkpoint, <= 1.15x the raw pipeline (cut = {mode})",
                                    f"scale {scale}", f"{fmt(r)}x", r is not None and r <= 1.15))
            if rate == "1" and scale >= 1000:
                for mode, secs in (("backup", p), ("atomic", pa)):
                    r = ratio(f_bb, secs)
                    targets.append((f"Incremental at 1% >= 10x faster than pg_basebackup into the same pool, scale 1000 (cut = {mode})",
                                    f"scale {scale}", f"{fmt(r, 1)}x", r is not None and r >= 10))
        if med(d, "layout_tree"):
            home += home_rows(d, scale, f_bytes, f_pgzfs)
            r = ratio(f_pgzfs, f_bb)
            targets.append(("Full re-seed <= 0.8x pg_basebackup into the same pool where WAL need not "
                            "travel (pg_wal on its own dataset, cut = backup)",
                            f"scale {scale}", f"{fmt(r)}x", r is not None and r <= 0.8))
        rows, ratios = rejoin_results(d, scale)
        rejoin += rows
        for div, r in ratios:
            targets.append(("Rejoin faster than pg_rewind + restart", f"scale {scale}, {div}% diverged",
                            f"{fmt(r)}x", r is not None and r < 1.0))
        for stream, label in (("zfs", "zfs send of db1"), ("zeros", "zeros (transport only)")):
            o, s = med(d, f"dp_{stream}_openssh_MiBps"), med(d, f"dp_{stream}_ssh2_MiBps")
            if o is None and s is None:
                continue
            g = med(d, f"dp_{stream}_openssh_gcm_MiBps")
            dp.append(f"| {scale} | {label} | {fmt(o, 0)} | {fmt(s, 0)} | "
                      f"{fmt(ratio(s, o) * 100 if ratio(s, o) else None, 0)}% | {fmt(g, 0)} |")
            r = ratio(s, o)
            targets.append(("Data path (ssh2) >= 90% of OpenSSH", f"scale {scale}, {label}",
                            f"{fmt(r * 100 if r else None, 0)}%", r is not None and r >= 0.9))
            r = ratio(g, o)
            targets.append(("Data path (default ssh_data_path = openssh, AES-GCM first) >= 90% of OpenSSH",
                            f"scale {scale}, {label}", f"{fmt(r * 100 if r else None, 0)}%",
                            r is not None and r >= 0.9))
        for path in ("ssh2", "openssh"):
            w = med(d, f"full_pgzfs_{path}_s")
            if w is not None:
                e2e.append(f"| {scale} | {path} | {fmt(w)} | {fmt(med(d, f'full_{path}_transfer_MiBps'), 0)} |")
        limit, got = med(d, "bw_limit_MiBps"), med(d, "bw_full_transfer_MiBps")
        if limit is not None and got is not None:
            off = abs(got - limit) / limit
            transport.append(f"| {scale} | bwlimit = {fmt(limit, 0)} MiB/s | - | {fmt(got, 1)} | "
                             f"{fmt(off * 100, 1)}% off the limit |")
            targets.append(("bwlimit holds its limit within 5%", f"scale {scale}, {fmt(limit, 0)} MiB/s",
                            f"{fmt(got, 1)} MiB/s ({fmt(off * 100, 1)}% off)", off <= 0.05))
        z = med(d, "zstd_full_s")
        if z is not None:
            plain = f_openssh if f_openssh is not None else med(d, "full_pgzfs_s")
            transport.append(f"| {scale} | ssh_compress = zstd:3 | {fmt(z)} | "
                             f"{fmt(med(d, 'zstd_full_transfer_MiBps'), 0)} | "
                             f"{fmt(ratio(z, plain))}x the uncompressed default ({fmt(plain)} s) |")
    if not any(t[0].startswith("Incremental at 1% >= 10x") for t in targets):
        targets.append(("Incremental at 1% >= 10x faster than pg_basebackup into the same pool, scale 1000",
                        "scale 1000 not measured in this run", "n/a", None))
    targets.append(("Peak RSS <= 64 MiB", "largest of all pgzfs runs",
                    f"{fmt(worst_rss / 1024 if worst_rss else None, 1)} MiB",
                    worst_rss is not None and worst_rss <= 64 * 1024))

    st = []
    for scale in sorted(data):
        columns = [("full", f"full-{scale}-*.json"), ("full, atomic", f"fullA-{scale}-*.json")]
        columns += [(f"incr. {r}%", f"inc{r}-{scale}-*.json") for r in RATES]
        columns += [(f"incr. {r}%, atomic", f"incA{r}-{scale}-*.json") for r in RATES]
        medians = [step_medians(workdir, pattern) for _, pattern in columns]
        st += [f"Scale {scale}:", "",
               "| step | " + " | ".join(name for name, _ in columns) + " |",
               "|---|" + "---|" * len(columns)]
        for step in STEP_ORDER:
            # A step a cut mode does not have (the atomic cut has no backup session) is "-".
            row = ["-" if m.get(step) is None else fmt(m.get(step)) for m in medians]
            st.append(f"| {step} | " + " | ".join(row) + " |")
        st.append("")

    plot = draw_plot(plot_rows, out)

    verdicts = ["| target | where | measured | verdict |", "|---|---|---|---|"]
    for name, where, value, ok in targets:
        # A ratio with a missing side prints as n/a: nothing was measured to judge.
        if value.startswith("n/a"):
            ok = None
        verdict = "not measured" if ok is None else ("pass" if ok else "**falls short**")
        verdicts.append(f"| {name} | {where} | {value} | {verdict} |")

    lines += [
        "# pgzfs benchmarks",
        "",
        "Written by `bench/run`"
        + (" in `--quick` mode (development only: scale 5, one run)" if quick == "1" else "")
        + f"; measured {started} to {finished}. Do not edit the generated parts by hand: "
        "re-run `bench/run` (as root) to refresh them; `bench/notes.md` is included verbatim.",
        "",
        "## Machine",
        "",
        f"- {machine}",
        f"- {zfs_note}",
        f"- {pg_version}; {ssh_note}",
        f"- scales {scales}, {runs} run(s) per measurement; every number is the median of the runs.",
        f"- layout: {layout_note(data)}",
        *remote_command_note(data),
        "",
        "## Method",
        "",
        "Everything runs on one machine in the loopback lab of `scripts/lab`: db1 (primary) and "
        "db2 (standby) are two PostgreSQL instances on two datasets of one zfs-fuse pool, and every "
        "transfer goes through a private sshd on 127.0.0.1, so network speed plays no part; CPU, "
        "zfs-fuse and the SSH implementations do.",
        "",
        "- **Two standbys, two cut modes**: db2 is re-seeded with `cut = \"backup\"` (the snapshot "
        "inside a backup session, with its forced checkpoint), db3 with `cut = \"atomic\"` (the "
        "snapshot alone, crash-consistent, no backup session); both from db1, after the same changes.",
        "- **(b) full re-seed**: the standby's dataset is destroyed, then `pgzfs reset-secondary` (release "
        "build) re-seeds it; the time is the process's wall clock (`/usr/bin/time -v`) from start to "
        "a streaming standby. Against it: `pg_basebackup -X stream -c fast` as the replication role "
        "into a new dataset of the same zfs-fuse pool (the fair anchor: the same file system pays "
        "for every byte), and again into a plain directory on the host's ext4 (the page cache; an "
        "extra column). \"copied\" is the size of pg_basebackup's result, the data plus only the "
        "WAL of its own backup. With pg_wal on its own dataset (the layout line above), db2's "
        "stream leaves pg_wal out and db2 streams its WAL from its slot (`send_pg_wal = false`, "
        "the default); db3's atomic cut must send it; with pg_wal inside the data dataset every "
        "stream carries it as it is, recycled segments included.",
        "- **(h) pg_wal left home**: with pg_wal on its own dataset, the full re-seed of db2 is "
        "run once more with `send_pg_wal = true`, and after every incremental of db2 the size of "
        "`zfs send -i` of db1's pg_wal dataset between the same two cuts is recorded (untimed): "
        "the bytes that did not travel.",
        "- **(e) peak RSS**: \"Maximum resident set size\" of every pgzfs run; the largest is the full "
        "re-seed at the largest scale.",
        "- **(d) data path**: the same stream read on the standby side and discarded, once through "
        "pgzfs's ssh2 channel (`examples/ssh_throughput.rs`: `SshHost::connect` + "
        "`Runner::source`, 1 MiB reads as in `transfer::copy`) and once through OpenSSH (`ssh ... | wc -c`). "
        "Two streams: a full `zfs send` of db1 (what a re-seed moves) and zeros from `dd` (the "
        "transport alone, without zfs-fuse's read speed).",
        "- **(f) transport options**: at the first scale, the full re-seed of (b) again with "
        "`bwlimit` (the throughput pgzfs reports must stay within 5% of the limit) and with "
        "`ssh_compress = \"zstd:3\"` (the stream compressed by pgzfs on db1 and decompressed on db2).",
        "- **(a) incremental**: pgbench_accounts is changed with "
        "`UPDATE ... SET abalance = abalance + 1 WHERE aid % N = 0` and **no** `CHECKPOINT` "
        "afterwards (an operator does not run one before a re-seed; earlier reports ran one, which "
        "hid the backup cut's checkpoint), then four contenders bring their copy up to date, in an "
        "order rotated from run to run: `pgzfs reset-secondary` of db2 (cut = backup) and of db3 "
        "(cut = atomic), incremental, wall clock of the process; the **raw pipeline** as issue 12 "
        "defines it, on a standby of its own (pool/raw): `pg_ctl stop -m fast`, "
        "`ssh db1 zfs snapshot B`, `ssh db1 zfs send -i A B | zfs recv -F pool/raw` (unmounted "
        "around the receive, as zfs-fuse needs; fresh snapshots every time, OpenSSH with the same "
        "strict host-key options), the standby config a script writes (port, socket, "
        "primary_conninfo, standby.signal), `pg_ctl start -w`, and the wait until db1 lists it "
        "as streaming, as pgzfs waits for its own; and **(c)** "
        "`rsync -a --delete --exclude='/pg_wal/*'` of db1's data directory over ssh into a plain "
        "directory (transfer only, no PostgreSQL restart: a lower bound for the rsync approach; "
        "pg_wal left out, as rsync recipes for standbys do). The raw pipeline sends db1's dataset "
        "alone, so with pg_wal on a child it leaves pg_wal out like pgzfs's db2. Bytes moved: pgzfs's "
        "own count of the stream, `dd`'s count in the raw pipeline, rsync's \"Total bytes received\".",
        "- **Between contenders**, full or incremental (untimed): bench/run waits until zfs-fuse "
        "has read and written less than 1 MiB a second for three seconds in a row, then runs "
        "`sync`, so that a pool still writing out the load or the previous contender's copy is "
        "not the next one's to pay for.",
        "- **(g) rejoin vs pg_rewind**: db2 is promoted (`pg_ctl promote`), db1 goes on writing "
        "(`UPDATE ... WHERE aid % N = 0` with N from the calibration below; none for 0%) and is "
        "stopped; then either `pgzfs rejoin --to db2` (which keeps db1's diverged writes in its "
        "quarantine file, rolls db1 back to the newest common snapshot and re-seeds it incrementally) "
        "or `pg_rewind` from db2, db1's own postgresql.auto.conf put back (pg_rewind copies the "
        "source's), standby.signal and primary_conninfo, `pg_ctl start`. Timed until the new primary "
        "lists the old one as streaming. The roles swap every round; db1 runs with "
        "`wal_log_hints = on`, which pg_rewind needs. Bytes: the rejoin's stream, pg_rewind's own "
        "\"kB copied\".",
        "- **Change-rate calibration**: a pgbench_accounts heap page holds 61 rows, a 16k ZFS record "
        "(the lab's recordsize) 122. Updating every N-th row with N = 122 / rate touches about "
        "`rate` of the table's records (plus the records the new row versions, index entries and "
        "WAL land in). The column \"changed\" is what actually travelled: the incremental stream "
        "bytes over the full stream bytes.",
        "",
        "## Results",
        "",
        "### Full re-seed (b) and peak RSS (e)",
        "",
        *full,
        "",
        "### Incremental re-seed (a), rsync (c)",
        "",
        *inc,
        "",
        "The raw pipeline's parts (medians):",
        "",
        *raw_parts,
        "",
        *(["### pg_wal left home (h)", "", *home, ""] if len(home) > 2 else []),
        *(["### Rejoin vs pg_rewind (g)", "", *rejoin, ""] if len(rejoin) > 2 else []),
        "### Data path (d)",
        "",
        *dp,
        "",
        *(["pgzfs end to end, full re-seed with each data path:", "", *e2e, ""] if len(e2e) > 2 else []),
        *(["### Transport options (f)", "", *transport, ""] if len(transport) > 2 else []),
        *([f"### Re-seed time against database size, 1% change", "",
           f"![re-seed time against database size at 1% change]({plot})", ""] if plot else []),
        "### Where pgzfs's time goes (median seconds per step; the main runs)",
        "",
        *st,
        "",
        "## Targets",
        "",
        *verdicts,
        "",
    ]
    notes = os.path.join(os.path.dirname(os.path.abspath(__file__)), "notes.md")
    if os.path.exists(notes):
        with open(notes) as f:
            lines += [f.read().rstrip(), ""]
    # A zfs-fuse run does not measure OpenZFS: the last OpenZFS section stays.
    kept = openzfs_block(out)
    if kept:
        lines += [kept, ""]
    text = "\n".join(lines)
    with open(out, "w") as f:
        f.write(text)
    # The tables, for the terminal.
    print("\n".join(["", *full, "", *inc, "", *home, "", *rejoin, "", *raw_parts, "", *dp, "", *e2e, "", *transport, "", *st, "",
                     *verdicts, ""]))


def openzfs_main():
    """The "OpenZFS (kernel, QEMU TCG)" section, from bench/run --openzfs."""
    (results, out, machine, zfs_note, pg_version, ssh_note, started, finished,
     scales, runs, quick, command) = sys.argv[2:14]
    data = load(results)
    workdir = os.path.dirname(os.path.abspath(results))
    full = ["| scale | DB size | full stream | pgzfs full re-seed (s) | pg_basebackup, copy only (s) "
            "| pg_basebackup + standby streaming (s) | pgzfs / (basebackup + standby) | pgzfs / copy only |",
            "|---|---|---|---|---|---|---|---|"]
    inc = ["| scale | change | changed (stream/full) | pgzfs incremental (s) | raw pipeline, standby streaming (s) "
           "| ratio pgzfs/raw | bytes moved: pgzfs / raw | rsync (s) | rsync/pgzfs | (basebackup + standby)/pgzfs |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    raw_parts = list(RAW_PARTS_HEADER)
    home = list(HOME_HEADER)
    rejoin = list(REJOIN_HEADER)
    targets = []
    dp = ["| scale | stream | ssh2 / OpenSSH default | OpenSSH aes128-gcm / OpenSSH default |",
          "|---|---|---|---|"]
    for scale in sorted(data):
        d = data[scale]
        db, f_bytes = med(d, "db_bytes"), med(d, "full_bytes")
        f_p, f_bb, f_bbs = med(d, "full_pgzfs_s"), med(d, "full_basebackup_s"), med(d, "full_basebackup_standby_s")
        full.append(f"| {scale} | {fmt(db / 2**20 if db else None, 0)} MiB | "
                    f"{fmt(f_bytes / 2**20 if f_bytes else None, 0)} MiB | {fmt(f_p)} | {fmt(f_bb)} | {fmt(f_bbs)} | "
                    f"{fmt(ratio(f_p, f_bbs))}x | {fmt(ratio(f_p, f_bb))}x |")
        for rate in RATES:
            p, raw, rs = med(d, f"inc{rate}_pgzfs_s"), med(d, f"inc{rate}_raw_s"), med(d, f"inc{rate}_rsync_s")
            if p is None and raw is None:
                continue
            b = med(d, f"inc{rate}_bytes")
            changed = ratio(b, f_bytes)
            raw_b = med(d, f"inc{rate}_raw_bytes")
            inc.append(f"| {scale} | {rate}% | {fmt(changed * 100 if changed is not None else None, 2)}% "
                       f"({fmt(b / 2**20 if b is not None else None, 1)} MiB) | {fmt(p)} | {fmt(raw)} | "
                       f"{fmt(ratio(p, raw))}x | {fmt(b / 2**20 if b is not None else None, 1)} / "
                       f"{fmt(raw_b / 2**20 if raw_b is not None else None, 1)} MiB | "
                       f"{fmt(rs)} | {fmt(ratio(rs, p))}x | {fmt(ratio(f_bbs, p), 1)}x |")
            raw_parts.append(raw_parts_row(d, scale, rate))
            if rate == "1" and p is not None and raw is not None:
                r = ratio(p, raw)
                targets.append(f"| scale {scale}: incremental at 1%, no pre-checkpoint, <= 1.15x the raw pipeline "
                               f"| {fmt(r)}x | {'pass' if r <= 1.15 else 'miss'} |")
        if f_p is not None and f_bb is not None:
            # As on zfs-fuse: against pg_basebackup's copy alone, though pgzfs's time
            # also includes starting the standby until it streams.
            r = ratio(f_p, f_bb)
            targets.append(f"| scale {scale}: full re-seed <= 1.0x pg_basebackup into the same pool (copy only) "
                           f"| {fmt(r)}x | {'pass' if r <= 1.0 else 'miss'} |")
            if med(d, "layout_tree"):
                targets.append(f"| scale {scale}: full re-seed <= 0.8x pg_basebackup (copy only) where WAL need "
                               f"not travel (pg_wal on its own dataset) | {fmt(r)}x | {'pass' if r <= 0.8 else 'miss'} |")
        if med(d, "layout_tree"):
            home += home_rows(d, scale, f_bytes, f_p)
        rows, ratios = rejoin_results(d, scale)
        rejoin += rows
        for div, r in ratios:
            targets.append(f"| scale {scale}: rejoin faster than pg_rewind + restart, {div}% diverged | {fmt(r)}x | "
                           f"{'pass' if r is not None and r < 1.0 else 'miss'} |")
        for stream, label in (("zfs", "zfs send of db1"), ("zeros", "zeros (transport only)")):
            o, s2 = med(d, f"dp_{stream}_openssh_MiBps"), med(d, f"dp_{stream}_ssh2_MiBps")
            g = med(d, f"dp_{stream}_openssh_gcm_MiBps")
            r1, r2 = ratio(s2, o), ratio(g, o)
            pct = lambda r: "n/a" if r is None else f"{r * 100:.0f}%"
            dp.append(f"| {scale} | {label} | {pct(r1)} | {pct(r2)} |")
    st = []
    for scale in sorted(data):
        steps_full = step_medians(workdir, f"full-{scale}-*.json")
        steps_inc = {rate: step_medians(workdir, f"inc{rate}-{scale}-*.json") for rate in RATES}
        tot_full = sum(steps_full.values()) or None
        st += [f"Scale {scale} (share of the named steps' total):", "",
               "| step | full | " + " | ".join(f"incr. {r}%" for r in RATES) + " |",
               "|---|---|" + "---|" * len(RATES)]
        tot_inc = {r: (sum(steps_inc[r].values()) or None) for r in RATES}
        for step in STEP_ORDER:
            def share(v, t):
                return "n/a" if v is None or not t else f"{v / t * 100:.0f}%"
            row = [share(steps_full.get(step), tot_full)] + [share(steps_inc[r].get(step), tot_inc[r])
                                                              for r in RATES]
            st.append(f"| {step} | " + " | ".join(row) + " |")
        st.append("")
    lines = [
        OZ_BEGIN,
        "",
        "## OpenZFS (kernel, QEMU TCG)",
        "",
        "Written by `bench/run --openzfs`"
        + (" in `--quick` mode (development only)" if quick == "1" else "")
        + f"; measured {started} to {finished} with `{command}`. Everything in this section comes "
        "from that one run.",
        "",
        "**Only the ratios mean something here.** The guest runs under QEMU's TCG (no KVM on this "
        "machine): every instruction is emulated, 10 to 25 times slower than native, and the "
        "emulation slows CPU work (ssh ciphers, PostgreSQL, checksums) more than it slows waiting. "
        "The seconds in the tables are there so that each ratio can be checked; do not compare "
        "them with the zfs-fuse numbers above or with one another across runs.",
        "",
        f"- {machine}",
        f"- {zfs_note}",
        f"- {pg_version}; {ssh_note}",
        f"- scales {scales}, {runs} run(s) per measurement; every number is the ratio of the medians.",
        "",
        "### Method",
        "",
        "One guest per scale (`scripts/openzfs-vm up`, then `scripts/openzfs-vm lab --scale N`): "
        "db1 (primary) on pool pgzfs1, db2 (standby) re-seeded by pgzfs into pool pgzfs2, both in "
        "the same guest, every transfer through the guest's own sshd on 127.0.0.1. Before the "
        "first copy, db1's pg_wal moves onto a child dataset of its own (pgzfs1/db1/wal, 128k "
        "records), as the README lays a primary out and as bench/run does on zfs-fuse. The "
        "measurements run inside the guest (`bench/openzfs-guest`), with this build's release "
        "pgzfs and `examples/ssh_throughput` copied in. Like with like: every contender writes "
        "into pgzfs2, on a dataset with the standby's recordsize (16k), and none gets a step the "
        "others skip.",
        "",
        "- **(b) full re-seed**: db2's dataset is destroyed (untimed), then `pgzfs reset-secondary` "
        "re-seeds it; wall clock of the process, start to a streaming standby. Against it, "
        "`pg_basebackup -X stream -c fast -R` as the replication role into the dataset pgzfs2/bb, "
        "timed twice: the copy alone, and the copy plus starting that copy as a standby until "
        "`pg_stat_wal_receiver` says streaming (the end state pgzfs reaches). The two alternate "
        "which goes first.",
        "- **(a) incremental**: as on zfs-fuse (above): the same UPDATE and no CHECKPOINT before "
        "the contenders, then in a rotated order `pgzfs reset-secondary` of db2 (cut = backup), "
        "the raw pipeline on a standby of its own (pgzfs2/raw at /lab/raw: `pg_ctl stop -m fast`, "
        "`ssh zfs snapshot -r B`, `ssh zfs send -i A B | zfs recv -F` for the data and for pg_wal "
        "(a copy without a backup session needs its pg_wal), standby config, "
        "`pg_ctl start -w`, until db1 lists it as streaming) "
        "and **(c)** `rsync -a --delete` of db1's data directory without pg_wal over ssh into the "
        "dataset pgzfs2/rsync (transfer only; rsync is the host's, copied in).",
        "- **(h) pg_wal left home**: every full re-seed run also re-seeds with `send_pg_wal = true`, "
        "and after every incremental the size of pg_wal's own stream between the same two cuts is "
        "taken (untimed): the bytes that stayed home.",
        "- **(g) rejoin vs pg_rewind**: as on zfs-fuse: `pg_ctl promote` of the standby, the old "
        "primary goes on writing (none for 0%) and is stopped, then either `pgzfs rejoin --to NEW` "
        "or `pg_rewind` from NEW, the old node's own settings put back, standby config and "
        "`pg_ctl start`, timed until NEW lists it as streaming; the roles swap every round, the "
        "contenders alternate, and db1 runs with `wal_log_hints = on` from before the first copy.",
        "- **(d) data path**: a `zfs send` of db1 and 64 MiB of zeros read through pgzfs's ssh2 "
        "channel and through OpenSSH (default cipher, then AES-GCM first, as pgzfs's openssh data "
        "path offers it), discarded by `wc -c`.",
        "- Left out: (e) peak RSS (no GNU time in the guest; it does not depend on the ZFS) and "
        "(f) bwlimit and zstd (a rate limit in absolute MiB/s means nothing under TCG).",
        "",
        "### Targets on OpenZFS",
        "",
        "The targets of issue 12 that this section measures (the ratio of the medians; TCG "
        "emulation weighs on every contender, see above):",
        "",
        "| target | measured | verdict |",
        "|---|---|---|",
        *targets,
        "",
        "### Full re-seed (b)",
        "",
        *full,
        "",
        "### Incremental re-seed (a), rsync (c)",
        "",
        *inc,
        "",
        "The raw pipeline's parts (median seconds, for their proportions only):",
        "",
        *raw_parts,
        "",
        *(["### pg_wal left home (h)", "", *home, ""] if len(home) > 2 else []),
        *(["### Rejoin vs pg_rewind (g)", "", *rejoin, ""] if len(rejoin) > 2 else []),
        "### Data path (d)",
        "",
        *dp,
        "",
        "### Where pgzfs's time goes",
        "",
        *st,
    ]
    notes = os.path.join(os.path.dirname(os.path.abspath(__file__)), "notes-openzfs.md")
    if os.path.exists(notes):
        with open(notes) as f:
            lines += [f.read().rstrip(), ""]
    lines.append(OZ_END)
    block = "\n".join(lines)
    try:
        with open(out) as f:
            text = f.read()
    except FileNotFoundError:
        text = ""
    old = openzfs_block(out)
    if old:
        text = text.replace(old, block)
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + block + "\n"
    with open(out, "w") as f:
        f.write(text)
    print("\n".join(["", *targets, "", *full, "", *inc, "", *raw_parts, "", *home, "", *rejoin, "", *dp, "", *st]))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--openzfs"]:
        openzfs_main()
    else:
        main()
