#!/usr/bin/env python3
"""wdmfs against the C libfuse yardstick, in the same run.

Mounts both, then for several rounds runs each case on the yardstick and on
wdmfs, alternating (A B, B A, ...), and prints the medians and the ratio
wdmfs / yardstick. Then runs the in-process IRP benchmark (ordo-one/benchmark:
time per IRP and mallocs per IRP), from its own package, Benchmarks/Package.swift.
Usage (root):

    bash Benchmarks/run.sh [--rounds N]
"""
import argparse
import datetime
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, ".build", "bench")
MiB, GiB = 1 << 20, 1 << 30
IOCTL_DEMO_BUFFERED = "0x00222000"


def sh(*args, **kw):
    return subprocess.run(args, check=True, text=True, capture_output=True, **kw).stdout


def loadgen(*args):
    return float(sh(os.path.join(OUT, "loadgen"), *map(str, args)).strip())


def is_mounted(path):
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == path for line in f)


def stats(mp):
    with open(os.path.join(mp, ".stats")) as f:
        return dict(line.split() for line in f if line.strip())


class Side:
    def __init__(self, name, mp, zero, sink, ioctl_file, stacked):
        self.name, self.mp = name, mp
        self.zero, self.sink, self.ioctl_file, self.stacked = zero, sink, ioctl_file, stacked


def cases(read_total, small_count, ioctl_count):
    """(label, unit, scale, function(side) -> value)."""
    return [
        ("1 MiB sequential reads (zero)", "GB/s", 1e9,
         lambda s: loadgen("read", s.zero, MiB, read_total, 1)),
        ("1 MiB sequential writes (null / sink)", "GB/s", 1e9,
         lambda s: loadgen("write", s.sink, MiB, read_total, 1)),
        ("4 KiB reads (zero)", "k req/s", 1e3,
         lambda s: loadgen("read", s.zero, 4096, small_count * 4096, 1) / 4096),
        ("64 B ioctl round trips", "k req/s", 1e3,
         lambda s: loadgen("ioctl", s.ioctl_file, ioctl_count, 64, IOCTL_DEMO_BUFFERED)),
        ("1 MiB reads, two filters over zero", "GB/s", 1e9,
         lambda s: loadgen("read", s.stacked, MiB, read_total, 1)),
        ("1 MiB reads, two concurrent readers", "GB/s", 1e9,
         lambda s: loadgen("read", s.zero, MiB, 2 * read_total, 2)),
    ]


def fio_iops(path, seconds, *args, engine="io_uring"):
    """IOPS of one fio job on `path` (write, 4 KiB) for `seconds`."""
    out = subprocess.run(["fio", "--name=w", f"--filename={path}", f"--ioengine={engine}", "--rw=write", "--bs=4k",
                          "--size=16M", "--time_based", f"--runtime={seconds}", "--output-format=json", *args],
                         capture_output=True, text=True, check=True)
    import json
    return json.loads(out.stdout)["jobs"][0]["write"]["iops"]


def empty_echo_selects_readable(mp):
    """Whether select says an empty echo is readable (the truth: it is not)."""
    import select
    fd = os.open(f"{mp}/echo", os.O_RDONLY | os.O_NONBLOCK)
    try:
        return bool(select.select([fd], [], [], 0.2)[0])
    finally:
        os.close(fd)


def observer_table(wdmfs, mp, rounds, small_count, ioctl_count):
    """What the verifier's rules and the tracer cost when on, on the same mount:
    4 KiB reads through two filters and 64 B ioctls with nothing observing, with
    `wdmfs verify MP all`, and with a trace reader streaming to /dev/null (all
    events formatted and delivered). Rounds alternate the three."""
    def reads():
        return loadgen("read", f"{mp}/zero-stacked", 4096, small_count * 4096, 1) / 4096

    def ioctls():
        return loadgen("ioctl", f"{mp}/ioctl-demo", ioctl_count, 64, IOCTL_DEMO_BUFFERED)

    modes = ("off", "verifier all", "tracing on")
    got = {m: {"reads": [], "ioctls": []} for m in modes}
    for r in range(rounds):
        for mode in modes if r % 2 == 0 else reversed(modes):
            reader = None
            if mode == "verifier all":
                sh(wdmfs, "verify", mp, "all")
            if mode == "tracing on":
                reader = subprocess.Popen(["cat", f"{mp}/.trace"], stdout=subprocess.DEVNULL)
                while stats(mp)["trace_readers"] == "0":
                    time.sleep(0.01)
            try:
                got[mode]["reads"].append(reads())
                got[mode]["ioctls"].append(ioctls())
            finally:
                if reader:
                    reader.terminate()
                    reader.wait()
                if mode == "verifier all":
                    sh(wdmfs, "verify", mp, "none")
    out = ["\nObservers on wdmfs (same mount; 4 KiB reads through two filters, 64 B ioctls; k req/s, medians):\n",
           "| observers | 4 KiB reads | / off | 64 B ioctls | / off |", "| --- | ---: | ---: | ---: | ---: |"]
    base_r, base_i = statistics.median(got["off"]["reads"]), statistics.median(got["off"]["ioctls"])
    for mode in modes:
        rd, io = statistics.median(got[mode]["reads"]), statistics.median(got[mode]["ioctls"])
        out.append(f"| {mode} | {rd / 1e3:.1f} | {rd / base_r:.2f} | {io / 1e3:.1f} | {io / base_i:.2f} |")
    out.append(f"\n(trace events lost by the streaming reader: {stats(mp)['trace_events_lost']})")
    return out


ISOLATION_TREE = """devices:
  - {name: zero, hardware_ids: ['Root\\Zero']}
  - {name: zero-host, hardware_ids: ['Root\\Zero'], isolation: host}
  - {name: ioctl-demo, hardware_ids: ['Root\\IoctlDemo']}
  - {name: ioctl-demo-host, hardware_ids: ['Root\\IoctlDemo'], isolation: host}
  - {name: crashy, hardware_ids: ['Root\\Misbehave'], isolation: host}
"""


def envelope_ioctl(fd, code, out_len=0):
    """One DeviceIoControl through the wdmfs envelope; its NTSTATUS."""
    import fcntl
    import struct
    header = struct.Struct("<IIIIQ")
    buf = bytearray(header.pack(code, 0, out_len, 0, 0) + bytes(out_len))
    fcntl.ioctl(fd, (3 << 30) | (len(buf) << 16) | (ord("W") << 8) | 1, buf)
    return header.unpack_from(buf)[3]


def isolation_table(wdmfs, rounds, read_total, small_count, ioctl_count):
    """What a driver host costs per request: the same driver in the daemon and in
    a host of its own (`isolation: host`), on one mount, rounds alternating; the
    host's memory; and the time from a host's crash to its device serving again."""
    mp = tempfile.mkdtemp(prefix="wdmfs-bench-iso.")
    tree = os.path.join(OUT, "isolation.yaml")
    with open(tree, "w") as f:
        f.write(ISOLATION_TREE)
    rows = [("4 KiB reads (zero)", "k req/s", 1e3, lambda d: loadgen("read", f"{mp}/{d}", 4096, small_count * 4096, 1) / 4096, "zero"),
            ("64 B ioctl round trips", "k req/s", 1e3, lambda d: loadgen("ioctl", f"{mp}/{d}", ioctl_count, 64, IOCTL_DEMO_BUFFERED), "ioctl-demo"),
            ("1 MiB reads (zero)", "GB/s", 1e9, lambda d: loadgen("read", f"{mp}/{d}", MiB, read_total, 1), "zero")]
    got = {label: {"in-process": [], "host": []} for label, *_ in rows}
    try:
        sh(wdmfs, "mount", mp, "--tree", tree)
        for r in range(rounds):
            for label, _, _, fn, dev in rows:
                for side in (("in-process", "host") if r % 2 == 0 else ("host", "in-process")):
                    got[label][side].append(fn(dev if side == "in-process" else dev + "-host"))
        daemon = int(sh("pgrep", "-f", f"mount {mp} --foreground").split()[0])
        host_pids = sh("pgrep", "-P", str(daemon), "-f", "driver-host").split()
        rss = [int(next(l.split()[1] for l in open(f"/proc/{p}/status") if l.startswith("VmRSS:"))) for p in host_pids]
        # Crash to serving: the crash IOCTL, then new handles until one is answered.
        recoveries = []
        for _ in range(3):
            fd = os.open(f"{mp}/crashy", os.O_RDWR)
            t0 = time.monotonic()
            envelope_ioctl(fd, 0x00222420)
            os.close(fd)
            while True:
                try:
                    fd = os.open(f"{mp}/crashy", os.O_RDWR)
                    ok = envelope_ioctl(fd, 0x00222480, 8) == 0
                    os.close(fd)
                    if ok:
                        break
                except OSError:
                    pass
                time.sleep(0.001)
            recoveries.append(time.monotonic() - t0)
        copied = stats(mp)["bytes_copied"]
    finally:
        if is_mounted(mp):
            subprocess.run([wdmfs, "unmount", mp])
        os.rmdir(mp)
    out = [f"\nDriver hosts (isolation: host) against the same driver in the daemon, one mount, {rounds} rounds alternating, medians:\n",
           "| case | in the daemon | in a host | host / daemon (time per request) |", "| --- | ---: | ---: | ---: |"]
    for label, unit, scale, _, _ in rows:
        d, h = statistics.median(got[label]["in-process"]) / scale, statistics.median(got[label]["host"]) / scale
        out.append(f"| {label} | {d:.2f} {unit} | {h:.2f} {unit} | {d / h:.2f} |")
    out.append(f"\nHost memory (VmRSS): {', '.join(f'{k / 1024:.1f} MiB' for k in rss)}; "
               f"crash to serving again: {statistics.median(recoveries) * 1000:.0f} ms median of {len(recoveries)}; "
               f"bytes_copied on that mount {copied} (the one copy of each IOCTL's envelope, made in the shared memory when it pends; reads copy nothing)")
    return out


def fio_poll_table(wdmfs, seconds):
    """io_uring on the default tree, whose echo can pend: io_uring polls a FUSE file
    before each nonblocking attempt, and the kernel asks the daemon on each poll
    unless the connection said ENOSYS once. `auto` gives echo a connection of its
    own; `on` keeps one connection with poll; `off` one connection without."""
    rows = []
    for mode in ("auto", "on", "off"):
        mp = tempfile.mkdtemp(prefix="wdmfs-bench-fio.")
        try:
            sh(wdmfs, "mount", mp, "--poll", mode)
            before = int(stats(mp)["fuse_polls"])
            buffered = fio_iops(f"{mp}/ramdisk0", seconds, "--iodepth=1")
            direct1 = fio_iops(f"{mp}/ramdisk0", seconds, "--iodepth=1", "--direct=1")
            direct = fio_iops(f"{mp}/ramdisk0", seconds, "--iodepth=16", "--direct=1")
            polls = int(stats(mp)["fuse_polls"]) - before
            psync = fio_iops(f"{mp}/ramdisk0", seconds, engine="psync")
            rows.append((mode, buffered, direct1, direct, psync, polls, empty_echo_selects_readable(mp)))
        finally:
            if is_mounted(mp):
                subprocess.run([wdmfs, "unmount", mp])
            os.rmdir(mp)
    print("\n4 KiB writes on ramdisk0 of the default tree (fio, one run each):\n")
    print("| --poll | io_uring buffered, QD 1 | io_uring direct, QD 1 | io_uring direct, QD 16 | psync buffered | FUSE_POLL requests (io_uring runs) | empty echo selects readable |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for mode, b, d1, d, p, polls, echo in rows:
        print(f"| {mode} | {b:,.0f} | {d1:,.0f} | {d:,.0f} | {p:,.0f} | {polls:,} | {'yes (wrong)' if echo else 'no (right)'} |")
    print("\n(IOPS; QD 16 on two cores swings by a factor of three from run to run)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--quick", action="store_true", help="smaller transfers (a smoke run, not a measurement)")
    ap.add_argument("--skip-in-process", action="store_true")
    ap.add_argument("--skip-fio", action="store_true", help="leave out the io_uring / poll measurement")
    ap.add_argument("--isolation-only", action="store_true", help="only the driver-host table")
    a = ap.parse_args()
    read_total = (256 * MiB) if a.quick else 2 * GiB
    small_count = 20_000 if a.quick else 100_000
    ioctl_count = 10_000 if a.quick else 50_000

    wdmfs = os.path.join(ROOT, ".build", "release", "wdmfs")
    if a.isolation_only:
        print("\n".join(isolation_table(wdmfs, max(3, a.rounds // 2), read_total // 4, small_count, ioctl_count)))
        return
    ymp, wmp = tempfile.mkdtemp(prefix="wdmfs-bench-y."), tempfile.mkdtemp(prefix="wdmfs-bench-w.")
    results = {}
    try:
        sh(os.path.join(OUT, "yardstick"), ymp)
        sh(wdmfs, "mount", wmp, "--tree", "bench")
        yard = Side("yardstick", ymp, f"{ymp}/zero", f"{ymp}/sink", f"{ymp}/echo", f"{ymp}/zero")
        wdm = Side("wdmfs", wmp, f"{wmp}/zero", f"{wmp}/null", f"{wmp}/ioctl-demo", f"{wmp}/zero-stacked")
        table = cases(read_total, small_count, ioctl_count)
        for label, *_ in table:
            results[label] = {"yardstick": [], "wdmfs": []}
        for r in range(a.rounds):
            order = (yard, wdm) if r % 2 == 0 else (wdm, yard)
            for label, _, _, fn in table:
                for side in order:
                    results[label][side.name].append(fn(side))
            print(f"round {r + 1}/{a.rounds} done", file=sys.stderr)
        copied = stats(wmp)["bytes_copied"]
        violations = stats(wmp)["verifier_violations"]
        observed = observer_table(wdmfs, wmp, max(3, a.rounds // 2), small_count, ioctl_count)
    finally:
        if is_mounted(ymp):
            subprocess.run(["fusermount3", "-u", ymp])
        if is_mounted(wmp):
            subprocess.run([wdmfs, "unmount", wmp])
        for d in (ymp, wmp):
            try:
                os.rmdir(d)
            except OSError:
                pass

    cores = os.cpu_count()
    print(f"\nwdmfs vs the C libfuse yardstick, {datetime.date.today()}, {cores} cores, "
          f"{a.rounds} rounds alternating, medians{' (QUICK: smoke sizes)' if a.quick else ''}\n")
    print("| case | yardstick | wdmfs | wdmfs / yardstick | per-round ratios, min to max |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for label, unit, scale, _ in cases(read_total, small_count, ioctl_count):
        ys, ws = results[label]["yardstick"], results[label]["wdmfs"]
        y, w = statistics.median(ys) / scale, statistics.median(ws) / scale
        per_round = [b / a for a, b in zip(ys, ws)]
        print(f"| {label} | {y:.2f} {unit} | {w:.2f} {unit} | {w / y:.2f} | {min(per_round):.2f} to {max(per_round):.2f} |")
    one, two = "1 MiB sequential reads (zero)", "1 MiB reads, two concurrent readers"
    for side in ("yardstick", "wdmfs"):
        s = statistics.median(results[two][side]) / statistics.median(results[one][side])
        print(f"| two readers / one reader, {side} | | | {s:.2f} | |")
    print(f"\nwdmfs copy counter after the run: bytes_copied {copied}, verifier_violations {violations}")
    print("\n".join(observed))

    print("\n".join(isolation_table(wdmfs, max(3, a.rounds // 2), read_total // 4, small_count, ioctl_count)))

    if not a.skip_fio:
        fio_poll_table(wdmfs, 1 if a.quick else 5)

    if not a.skip_in_process:
        print("\nIn-process IRP path (ordo-one/benchmark; p50 per IRP, no FUSE):\n")
        out = subprocess.run(
            ["swift", "package", "--allow-writing-to-package-directory", "benchmark", "--target", "IRPPath",
             "--no-progress"], cwd=os.path.join(ROOT, "Benchmarks"), text=True, capture_output=True)
        if out.returncode != 0:
            print(out.stdout[-3000:], out.stderr[-3000:])
            sys.exit(1)
        print("| IRP | time (ns) | mallocs |")
        print("| --- | ---: | ---: |")
        for name, body in re.findall(r"\n(\S[^\n]*)\n╒[^\n]*\n(.*?)╘", out.stdout, re.S):
            row = {}
            # p50 is the third column; the time's unit follows the benchmark's scale (ns, μs, ms).
            m = re.search(r"Time \(wall clock\) \((ns|μs|us|ms)\)[^│]*│\s*\S+\s*│\s*\S+\s*│\s*(\S+)", body)
            if m:
                ns = float(m.group(2)) * {"ns": 1, "μs": 1000, "us": 1000, "ms": 1e6}[m.group(1)]
                row["time"] = f"{ns:.0f}"
            m = re.search(r"Malloc \(total\)[^│]*│\s*\S+\s*│\s*\S+\s*│\s*(\S+)", body)
            row["mallocs"] = m.group(1) if m else "?"
            print(f"| {name} | {row.get('time', '?')} | {row['mallocs']} |")


if __name__ == "__main__":
    main()
