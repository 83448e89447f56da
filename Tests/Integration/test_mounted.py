"""The mounted tree, through real system calls: open, read, write, pread,
pwrite, ioctl (fcntl), signals."""
import errno
import hashlib
import os
import random
import signal
import subprocess
import sys
import threading
import time

import pytest

import envelope as env
from conftest import blocked_in, mount_tree, unmount_tree, is_mounted, wait_until, wchan

MiB = 1 << 20


def test_the_root_lists_the_default_devices(tree):
    assert sorted(os.listdir(tree.path)) == sorted([".devices", ".interfaces", ".stats", ".power", ".verifier", ".trace", "null", "zero", "ramdisk0", "echo", "ioctl-demo", "toaster-bus"])


def test_the_ramdisk_shows_its_length(tree):
    assert os.stat(tree.dev("ramdisk0")).st_size == 64 * MiB
    assert os.stat(tree.dev("zero")).st_size == 0


def test_null_reads_empty_and_takes_any_write(tree):
    with open(tree.dev("null"), "rb") as f:
        assert f.read() == b""
    fd = os.open(tree.dev("null"), os.O_WRONLY)
    try:
        assert os.write(fd, b"x" * MiB) == MiB
    finally:
        os.close(fd)


def test_zero_fills_the_whole_buffer(tree):
    fd = os.open(tree.dev("zero"), os.O_RDONLY)
    try:
        for size in (1, 4096, 100_000, MiB):
            data = os.read(fd, size)
            assert data == bytes(size)
    finally:
        os.close(fd)


def test_ramdisk_scattered_writes_read_back_identical(tree):
    """Random writes at unaligned offsets (some overlapping), checked against a model of the disk."""
    rng = random.Random(1234)
    model = bytearray(64 * MiB)
    fd = os.open(tree.dev("ramdisk0"), os.O_RDWR)
    try:
        os.pwrite(fd, bytes(64 * MiB), 0)
        regions = []
        for _ in range(64):
            size = rng.choice([1, 511, 4096, 65536, 300_001])
            off = rng.randrange(0, 64 * MiB - size)
            data = rng.randbytes(size)
            assert os.pwrite(fd, data, off) == size
            model[off:off + size] = data
            regions.append((off, size))
        for off, size in regions:
            assert hashlib.sha256(os.pread(fd, size, off)).digest() == hashlib.sha256(model[off:off + size]).digest()
        whole = b"".join(os.pread(fd, MiB, i * MiB) for i in range(64))
        assert hashlib.sha256(whole).digest() == hashlib.sha256(model).digest()
    finally:
        os.close(fd)


def test_ramdisk_non_overlapping_regions_checksum(tree):
    rng = random.Random(99)
    fd = os.open(tree.dev("ramdisk0"), os.O_RDWR)
    try:
        regions = [(i * 4 * MiB + rng.randrange(0, MiB), rng.randbytes(rng.randrange(1, 2 * MiB))) for i in range(16)]
        for off, data in regions:
            assert os.pwrite(fd, data, off) == len(data)
        for off, data in reversed(regions):
            assert hashlib.md5(os.pread(fd, len(data), off)).hexdigest() == hashlib.md5(data).hexdigest()
    finally:
        os.close(fd)


def test_ramdisk_end_of_disk(tree):
    size = 64 * MiB
    fd = os.open(tree.dev("ramdisk0"), os.O_RDWR)
    try:
        assert os.pread(fd, 100, size) == b""
        assert os.pread(fd, 100, size + 12345) == b""
        with pytest.raises(OSError) as e:
            os.pwrite(fd, b"abc", size)
        assert e.value.errno == errno.ENOSPC
        assert os.pwrite(fd, b"0123456789", size - 4) == 4
        assert os.pread(fd, 100, size - 4) == b"0123"
    finally:
        os.close(fd)


def test_concurrent_readers_and_writers_on_different_handles(tree):
    errors = []

    def writer(k):
        try:
            fd = os.open(tree.dev("ramdisk0"), os.O_RDWR)
            rng = random.Random(k)
            base = (32 + k) * MiB
            for i in range(20):
                data = rng.randbytes(64 * 1024)
                off = base + i * 64 * 1024
                os.pwrite(fd, data, off)
                if os.pread(fd, len(data), off) != data:
                    errors.append(f"writer {k} mismatch at {off}")
            os.close(fd)
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))

    def zero_reader():
        try:
            fd = os.open(tree.dev("zero"), os.O_RDONLY)
            for _ in range(50):
                if os.read(fd, 256 * 1024) != bytes(256 * 1024):
                    errors.append("zero returned non-zero bytes")
            os.close(fd)
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    threads += [threading.Thread(target=zero_reader) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []


def test_echo_reads_back_what_was_written(tree):
    w = os.open(tree.dev("echo"), os.O_WRONLY)
    r = os.open(tree.dev("echo"), os.O_RDONLY)
    try:
        assert os.write(w, b"ping ") == 5
        assert os.write(w, b"pong") == 4
        assert os.read(r, 100) == b"ping pong"
    finally:
        os.close(w)
        os.close(r)


def test_a_blocked_echo_reader_wakes_when_a_write_arrives(tree):
    r = os.open(tree.dev("echo"), os.O_RDONLY)
    got, tid = [], []
    before = tree.stats()["irps_pended"]

    def read():
        tid.append(threading.get_native_id())
        got.append(os.read(r, 64))
    t = threading.Thread(target=read)
    t.start()
    wait_until(lambda: got or (tid and tree.stats()["irps_pended"] > before and blocked_in(tid[0], "read")),
               "the reader waits in echo, blocked in read()")
    assert got == []
    w = os.open(tree.dev("echo"), os.O_WRONLY)
    os.write(w, b"wake up")
    t.join(5)
    os.close(w)
    os.close(r)
    assert got == [b"wake up"]


READER = r"""
import ctypes, os, signal, sys, time
libc = ctypes.CDLL(None, use_errno=True)
signal.signal(signal.SIGINT, lambda *a: None)  # a handler: the read must return, not the process die
fd = os.open(sys.argv[1], os.O_RDONLY)
buf = ctypes.create_string_buffer(64)
print("ready", flush=True)
t = time.monotonic()
n = libc.read(fd, buf, 64)
e = ctypes.get_errno()
print(n, e, round(time.monotonic() - t, 3), flush=True)
"""


def test_sigint_interrupts_a_blocked_echo_reader_within_a_second(tree):
    before = tree.stats()["irps_cancelled"]
    pended = tree.stats()["irps_pended"]
    p = subprocess.Popen([sys.executable, "-c", READER, tree.dev("echo")], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "ready"
        wait_until(lambda: p.poll() is not None or (tree.stats()["irps_pended"] > pended and blocked_in(p.pid, "read")),
                   "the reader waits in echo, blocked in read()")
        assert p.poll() is None
        sent = time.monotonic()
        p.send_signal(signal.SIGINT)
        n, e, _ = p.stdout.readline().split()
        elapsed = time.monotonic() - sent
        p.wait(5)
    finally:
        p.kill()
    assert int(n) == -1 and int(e) == errno.EINTR
    assert elapsed < 1.0
    assert tree.stats()["irps_cancelled"] == before + 1
    # The device still serves.
    w = os.open(tree.dev("echo"), os.O_RDWR)
    os.write(w, b"after")
    assert os.read(w, 10) == b"after"
    os.close(w)


def test_a_killed_reader_has_its_irp_cancelled_at_cleanup(tree):
    before = tree.stats()["irps_cancelled"]
    pended = tree.stats()["irps_pended"]
    p = subprocess.Popen(["cat", tree.dev("echo")], stdout=subprocess.DEVNULL)
    wait_until(lambda: p.poll() is not None or (tree.stats()["irps_pended"] > pended and blocked_in(p.pid, "read")),
               "cat waits in echo, blocked in read()")
    assert p.poll() is None
    p.send_signal(signal.SIGINT)
    assert p.wait(2) != 0
    for _ in range(100):
        if tree.stats()["irps_cancelled"] == before + 1:
            break
        time.sleep(0.02)
    assert tree.stats()["irps_cancelled"] == before + 1


# --- the ioctl envelope -------------------------------------------------------

def test_disk_ioctls_through_the_envelope(tree):
    fd = os.open(tree.dev("ramdisk0"), os.O_RDONLY)
    try:
        status, info, out = env.call(fd, env.IOCTL_DISK_GET_LENGTH_INFO, out_len=8)
        assert (status, info) == (env.STATUS_SUCCESS, 8)
        assert int.from_bytes(out, "little") == 64 * MiB
        status, info, out = env.call(fd, env.IOCTL_DISK_GET_DRIVE_GEOMETRY, out_len=24)
        assert (status, info) == (env.STATUS_SUCCESS, 24)
        cylinders, media, tracks, sectors, bps = __import__("struct").unpack("<qIIII", out)
        assert cylinders * tracks * sectors * bps == 64 * MiB and media == 12
        status, info, out = env.call(fd, env.IOCTL_DISK_GET_DRIVE_GEOMETRY_EX, out_len=64)
        assert (status, info) == (env.STATUS_SUCCESS, 32)
        assert int.from_bytes(out[24:32], "little") == 64 * MiB
    finally:
        os.close(fd)


@pytest.mark.parametrize("method", ["buffered", "in_direct", "out_direct", "neither"])
def test_the_four_buffering_methods_give_the_same_exchange(tree, method):
    fd = os.open(tree.dev("ioctl-demo"), os.O_RDWR)
    try:
        status, info, out = env.call(fd, env.IOCTL_DEMO_UPPER[method], b"Hello, envelope", out_len=15)
        assert (status, info, out) == (env.STATUS_SUCCESS, 15, b"HELLO, ENVELOPE")
    finally:
        os.close(fd)


def test_a_warning_status_comes_back_with_its_partial_data(tree):
    fd = os.open(tree.dev("ioctl-demo"), os.O_RDWR)
    try:
        status, info, out = env.call(fd, env.IOCTL_DEMO_UPPER["buffered"], b"abcdef", out_len=3)
        assert (status, info, out) == (env.STATUS_BUFFER_OVERFLOW, 3, b"ABC")
    finally:
        os.close(fd)


def test_an_unknown_ioctl_is_invalid_device_request_in_the_header(tree):
    fd = os.open(tree.dev("ramdisk0"), os.O_RDWR)
    try:
        status, info, out = env.call(fd, 0x00224FFC, b"x", out_len=8)
        assert status == env.STATUS_INVALID_DEVICE_REQUEST and out == b""
    finally:
        os.close(fd)


def test_an_ioctl_that_needs_write_access_is_denied_on_a_read_only_handle(tree):
    ro = os.open(tree.dev("ioctl-demo"), os.O_RDONLY)
    rw = os.open(tree.dev("ioctl-demo"), os.O_RDWR)
    try:
        assert env.call(ro, env.IOCTL_DEMO_RESET_COUNTS)[0] == env.STATUS_ACCESS_DENIED
        assert env.call(ro, env.IOCTL_DEMO_QUERY_COUNTS, out_len=32)[0] == env.STATUS_SUCCESS
        assert env.call(rw, env.IOCTL_DEMO_RESET_COUNTS)[0] == env.STATUS_SUCCESS
    finally:
        os.close(ro)
        os.close(rw)


def malformed_requests():
    return {
        "too short for the header": (env.request(10), bytearray(10)),
        "input length past the capacity": (env.request(32), bytearray(env.HEADER.pack(0x0007405C, 9, 8, 0, 0) + bytes(8))),
        "output length past the capacity": (env.request(32), bytearray(env.HEADER.pack(0x0007405C, 0, 9, 0, 0) + bytes(8))),
    }


def foreign_requests():
    good = env.HEADER.pack(0x0007405C, 0, 8, 0, 0) + bytes(8)
    return {
        "version 1 of the envelope (nr 0)": (env.request(32, nr=0), bytearray(good)),
        "another nr": (env.request(32, nr=2), bytearray(good)),
        "another type": (env.request(32, typ=ord("X")), bytearray(good)),
        "write-only direction": (env.request(32, direction=1), bytearray(good)),
        "TCGETS": (0x5401, bytearray(64)),
        "FS_IOC_GETFLAGS": (0x80086601, bytearray(8)),
        "BLKGETSIZE64": (0x80081272, bytearray(8)),
    }


@pytest.mark.parametrize("case", list(foreign_requests()))
def test_a_request_that_is_not_the_envelope_gets_enotty(tree, case):
    import fcntl
    req, buf = foreign_requests()[case]
    fd = os.open(tree.dev("ramdisk0"), os.O_RDWR)
    try:
        with pytest.raises(OSError) as e:
            fcntl.ioctl(fd, req, buf)
        assert e.value.errno == errno.ENOTTY
        assert env.call(fd, env.IOCTL_DISK_GET_LENGTH_INFO, out_len=8)[0] == env.STATUS_SUCCESS
    finally:
        os.close(fd)


def test_isatty_stty_and_lsattr_say_not_a_tty_not_invalid_argument(tree):
    with open(tree.dev("zero"), "rb") as f:
        assert not os.isatty(f.fileno())
    r = subprocess.run(["stty", "-F", tree.dev("zero")], capture_output=True, text=True)
    assert r.returncode != 0 and "Inappropriate ioctl" in r.stderr and "Invalid argument" not in r.stderr
    r = subprocess.run(["lsattr", tree.dev("ramdisk0")], capture_output=True, text=True)
    assert "Invalid argument" not in r.stderr


@pytest.mark.parametrize("case", list(malformed_requests()))
def test_a_malformed_envelope_gets_einval_and_the_daemon_keeps_serving(tree, case):
    import fcntl
    req, buf = malformed_requests()[case]
    fd = os.open(tree.dev("ramdisk0"), os.O_RDWR)
    try:
        with pytest.raises(OSError) as e:
            fcntl.ioctl(fd, req, buf)
        assert e.value.errno == errno.EINVAL
        status, _, out = env.call(fd, env.IOCTL_DISK_GET_LENGTH_INFO, out_len=8)
        assert status == env.STATUS_SUCCESS and int.from_bytes(out, "little") == 64 * MiB
    finally:
        os.close(fd)


def test_the_copy_counter_stays_zero_across_reads_writes_and_ioctls(fresh_tree):
    t = fresh_tree
    fd = os.open(t.dev("ramdisk0"), os.O_RDWR)
    os.pwrite(fd, os.urandom(MiB), 0)
    os.pread(fd, MiB, 0)
    env.call(fd, env.IOCTL_DISK_GET_LENGTH_INFO, out_len=8)
    os.close(fd)
    fd = os.open(t.dev("echo"), os.O_RDWR)
    os.write(fd, b"abc")
    os.read(fd, 3)
    os.close(fd)
    fd = os.open(t.dev("ioctl-demo"), os.O_RDWR)
    for code in env.IOCTL_DEMO_UPPER.values():
        env.call(fd, code, b"data", out_len=4)
    os.close(fd)
    with open(t.dev("zero"), "rb") as f:
        f.read(MiB)
    s = t.stats()
    assert s["irps_completed"] > 10
    assert s["bytes_copied"] == 0
    assert s["verifier_violations"] == 0


def test_bounce_buffers_make_the_copy_counter_count():
    m = mount_tree(["--bounce-buffers"])
    try:
        fd = os.open(m.dev("ioctl-demo"), os.O_RDWR)
        assert env.call(fd, env.IOCTL_DEMO_UPPER["buffered"], b"abcd", out_len=4)[2] == b"ABCD"
        os.close(fd)
        assert m.stats()["bytes_copied"] == 8
    finally:
        unmount_tree(m)


# --- the command line ----------------------------------------------------------

def run(tree, *args):
    return subprocess.run([tree.wdmfs, *args], capture_output=True, text=True, timeout=30)


def test_wdmfs_ioctl_prints_the_output_and_exits_by_ntstatus(tree):
    r = run(tree, "ioctl", tree.dev("ramdisk0"), "IOCTL_DISK_GET_LENGTH_INFO", "--out-size", "8")
    assert (r.returncode, r.stdout.strip(), r.stderr) == (0, "0000000400000000", "")
    r = run(tree, "ioctl", tree.dev("ramdisk0"), "0x00224FFC")
    assert r.returncode == 1 and "STATUS_INVALID_DEVICE_REQUEST" in r.stderr
    r = run(tree, "ioctl", tree.dev("ioctl-demo"), "0x00222000", "--in", "616263646566", "--out-size", "3")
    assert r.returncode == 1 and r.stdout.strip() == "414243" and "STATUS_BUFFER_OVERFLOW" in r.stderr
    r = run(tree, "ioctl", tree.dev("ioctl-demo"), "0x0022A044", "--read-only")
    assert r.returncode == 1 and "STATUS_ACCESS_DENIED" in r.stderr


def test_wdmfs_ioctl_usage_and_system_errors_exit_2(tree):
    assert run(tree, "ioctl", tree.dev("ramdisk0"), "0x7405C", "--in", "zz").returncode == 2
    assert run(tree, "ioctl", tree.dev("ramdisk0"), "NOT_A_CODE").returncode == 2
    assert run(tree, "ioctl", tree.dev("no-such-device"), "0x7405C").returncode == 2
    assert run(tree, "ioctl", tree.dev("ramdisk0"), "0x7405C", "--out-size", "20000").returncode == 2


def test_every_command_has_help_with_an_example(tree):
    for cmd in ([], ["mount"], ["unmount"], ["ioctl"]):
        r = run(tree, *cmd, "--help")
        assert r.returncode == 0 and "xample" in r.stdout, cmd


def test_unmount_unloads_every_driver_and_the_daemon_exits():
    m = mount_tree()
    try:
        r = subprocess.run([m.wdmfs, "unmount", m.path], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        assert not is_mounted(m.path)
        log = open(m.log).read()
        for driver in ("Null", "Zero", "RamDisk", "PassThroughFilter", "Echo", "IoctlDemo"):
            assert f"unloaded \\Driver\\{driver}" in log
    finally:
        unmount_tree(m)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_unmounts_a_foreground_daemon_which_exits_0(sig):
    from conftest import require_fuse, wdmfs_binary
    import tempfile
    require_fuse()
    path = tempfile.mkdtemp(prefix="wdmfs-test-")
    p = subprocess.Popen([wdmfs_binary(), "mount", path, "--foreground"], stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(200):
            if is_mounted(path):
                break
            time.sleep(0.02)
        assert is_mounted(path)
        p.send_signal(sig)
        assert p.wait(10) == 0
        assert not is_mounted(path)
        assert "unloaded \\Driver\\RamDisk" in p.stderr.read()
    finally:
        p.kill()
        if is_mounted(path):
            subprocess.run(["fusermount3", "-uz", path])
        os.rmdir(path)


def test_mount_refuses_a_missing_directory_clearly():
    from conftest import wdmfs_binary
    r = subprocess.run([wdmfs_binary(), "mount", "/nonexistent/wdmfs"], capture_output=True, text=True)
    assert r.returncode == 2 and "does not exist" in r.stderr


C_CLIENT = r"""
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include "wdmfs_ioctl.h"
int main(int argc, char **argv) {
    struct { struct wdmfs_ioctl_header h; unsigned char data[8]; } e;
    memset(&e, 0, sizeof e);
    e.h.code = 0x0007405C;
    e.h.output_length = 8;
    int fd = open(argv[1], O_RDONLY);
    if (fd < 0 || ioctl(fd, WDMFS_IOCTL(8), &e) != 0) { perror("ioctl"); return 2; }
    unsigned long long len; memcpy(&len, e.data, 8);
    printf("%d %08x %llu %llu\n", WDMFS_NT_SUCCESS(e.h.status), e.h.status, (unsigned long long)e.h.information, len);
    return 0;
}
"""


def test_the_c_header_describes_the_envelope(tree, tmp_path):
    import shutil
    cc = shutil.which("cc") or shutil.which("gcc")
    assert cc, "a C compiler is needed for this test"
    src = tmp_path / "client.c"
    src.write_text(C_CLIENT)
    include = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "include")
    subprocess.run([cc, "-I", include, "-o", str(tmp_path / "client"), str(src)], check=True)
    out = subprocess.run([str(tmp_path / "client"), tree.dev("ramdisk0")], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["1", "00000000", "8", str(64 * MiB)]


def test_an_echo_writer_waits_for_room_and_nothing_is_lost(tree):
    data = os.urandom(300_000)  # more than the 64 KiB ring
    got = bytearray()
    r = os.open(tree.dev("echo"), os.O_RDONLY)
    w = os.open(tree.dev("echo"), os.O_WRONLY)

    tid = []
    before = tree.stats()["irps_pended"]

    def write_all():
        tid.append(threading.get_native_id())
        view = memoryview(data)
        while view:
            n = os.write(w, view)
            view = view[n:]

    t = threading.Thread(target=write_all)
    t.start()
    wait_until(lambda: not t.is_alive() or (tid and tree.stats()["irps_pended"] > before and blocked_in(tid[0], "write")),
               "the writer has filled the ring and waits in echo, blocked in write()")
    assert t.is_alive()
    while len(got) < len(data):
        got += os.read(r, 50_000)
    t.join(10)
    os.close(r)
    os.close(w)
    assert bytes(got) == data


def test_fsync_is_irp_mj_flush_buffers(tree):
    fd = os.open(tree.dev("ramdisk0"), os.O_RDWR)
    try:
        os.fsync(fd)  # the RAM disk answers FLUSH_BUFFERS
    finally:
        os.close(fd)
    fd = os.open(tree.dev("ioctl-demo"), os.O_RDWR)
    try:
        with pytest.raises(OSError) as e:
            os.fsync(fd)  # no FLUSH_BUFFERS routine: STATUS_INVALID_DEVICE_REQUEST
        assert e.value.errno == errno.EINVAL
    finally:
        os.close(fd)


def test_random_envelopes_never_hurt_the_daemon(tree):
    """Fuzz the envelope: random sizes, codes (real ones with random methods too)
    and lengths, on every device. Each call either fails with EINVAL (malformed)
    or returns a status; afterwards every device still works and the verifier
    saw nothing."""
    import fcntl
    rng = random.Random(7)
    real = [env.IOCTL_DISK_GET_LENGTH_INFO, env.IOCTL_DISK_GET_DRIVE_GEOMETRY, env.IOCTL_DISK_GET_DRIVE_GEOMETRY_EX,
            env.IOCTL_DEMO_QUERY_COUNTS, env.IOCTL_DEMO_RESET_COUNTS, *env.IOCTL_DEMO_UPPER.values()]
    fds = [os.open(tree.dev(d), os.O_RDWR) for d in ("ramdisk0", "ioctl-demo", "zero", "null", "echo")]
    outcomes = {"einval": 0, "ran": 0}
    try:
        for _ in range(3000):
            fd = rng.choice(fds)
            capacity = rng.choice([0, 1, 7, 8, 24, 31, 32, 64, 100, 512, env.MAX_TOTAL - 24])
            code = rng.choice(real) if rng.random() < 0.6 else rng.getrandbits(32)
            if rng.random() < 0.3:
                code = (code & ~3) | rng.randrange(4)  # the same function through another method
            in_len = rng.choice([0, capacity, rng.randrange(capacity + 2), capacity + 1])
            out_len = rng.choice([0, capacity, rng.randrange(capacity + 2), capacity + 1])
            buf = bytearray(env.HEADER.pack(code, in_len, out_len, 0, 0) + rng.randbytes(capacity))
            try:
                fcntl.ioctl(fd, env.request(len(buf)), buf)
                outcomes["ran"] += 1
            except OSError as e:
                assert e.errno == errno.EINVAL
                at = env.output_offset(code, in_len)
                assert in_len > capacity or out_len > capacity or (out_len > 0 and at + out_len > capacity)
                outcomes["einval"] += 1
    finally:
        for fd in fds:
            os.close(fd)
    assert outcomes["ran"] > 1000 and outcomes["einval"] > 100
    fd = os.open(tree.dev("ramdisk0"), os.O_RDWR)
    try:
        assert env.call(fd, env.IOCTL_DISK_GET_LENGTH_INFO, out_len=8)[2] == (64 * MiB).to_bytes(8, "little")
    finally:
        os.close(fd)
    assert tree.stats()["verifier_violations"] == 0


def test_a_signal_ends_the_daemon_even_while_a_writer_waits_in_a_pending_write():
    """A write pends on the full echo buffer and holds a FUSE worker; SIGTERM must
    still end the daemon (the waiting IRP is cancelled, the writer sees EINTR)."""
    m = mount_tree()
    writer = None
    try:
        writer = subprocess.Popen([sys.executable, "-c", "import os,sys\nfd=os.open(sys.argv[1], os.O_WRONLY)\n"
                                   "try:\n    while True: os.write(fd, bytes(65536))\nexcept OSError as e:\n    print(e.errno)",
                                   m.dev("echo")], stdout=subprocess.PIPE, text=True)
        for _ in range(100):
            if m.stats()["irps_pended"] >= 1:
                break
            time.sleep(0.02)
        assert m.stats()["irps_pended"] >= 1
        r = subprocess.run([m.wdmfs, "unmount", m.path], capture_output=True, text=True)
        assert r.returncode == 2 and "still open" in r.stderr  # busy: refused, clearly
        daemon = int(subprocess.run(["pgrep", "-f", f"mount {m.path} --foreground"], capture_output=True, text=True).stdout.split()[0])
        os.kill(daemon, signal.SIGTERM)
        # The cancelled write returns EINTR; Python retries it, and the retry meets the
        # connection being torn down. Either way the writer is released, not left hanging.
        assert writer.wait(5) == 0
        assert int(writer.stdout.read()) in (errno.EINTR, errno.ECONNABORTED, errno.ENOTCONN, errno.ENODEV)
        for _ in range(250):
            if not os.path.exists(f"/proc/{daemon}"):
                break
            time.sleep(0.02)
        assert not os.path.exists(f"/proc/{daemon}")
        assert not is_mounted(m.path)
    finally:
        if writer and writer.poll() is None:
            writer.kill()
        unmount_tree(m)


def test_lazy_unmount_detaches_a_busy_tree():
    m = mount_tree()
    try:
        fd = os.open(m.dev("null"), os.O_RDWR)
        r = subprocess.run([m.wdmfs, "unmount", "--lazy", m.path], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        assert not is_mounted(m.path)
        os.close(fd)
    finally:
        unmount_tree(m)


def test_select_and_poll_tell_the_truth_about_echo(tree):
    """Empty echo: not readable, writable. Data written through another handle wakes
    a reader blocked in poll. Devices that never pend are always ready."""
    import select
    r = os.open(tree.dev("echo"), os.O_RDONLY)
    w = os.open(tree.dev("echo"), os.O_WRONLY)
    try:
        while select.select([r], [], [], 0)[0]:  # drain what earlier tests left
            os.read(r, 65536)
        assert select.select([r], [], [], 0.2)[0] == []
        assert select.select([], [w], [], 0.2)[1] == [w]
        p = select.poll()
        p.register(r, select.POLLIN)
        woke, tid = [], []

        def wait():
            tid.append(threading.get_native_id())
            woke.append(p.poll(5000))
        t = threading.Thread(target=wait)
        t.start()
        # Asleep in poll itself (poll_schedule_timeout), not waiting for the daemon's answer to FUSE_POLL.
        wait_until(lambda: woke or (tid and blocked_in(tid[0], "poll", "ppoll") and "poll" in wchan(tid[0])),
                   "the reader sleeps in poll() after echo said not readable")
        assert woke == []
        t0 = time.monotonic()
        os.write(w, b"ready")
        t.join(5)
        assert woke and woke[0][0][1] & select.POLLIN
        assert time.monotonic() - t0 < 1.0
        assert os.read(r, 100) == b"ready"
        z = os.open(tree.dev("zero"), os.O_RDONLY)
        assert select.select([z], [], [], 0)[0] == [z]
        os.close(z)
    finally:
        os.close(r)
        os.close(w)


def test_a_full_echo_is_not_writable_until_someone_reads(tree):
    import select
    w = os.open(tree.dev("echo"), os.O_WRONLY | os.O_NONBLOCK)
    r = os.open(tree.dev("echo"), os.O_RDONLY)
    try:
        filled = 0
        while select.select([], [w], [], 0)[1]:
            filled += os.write(w, bytes(8192))
        assert filled == 64 * 1024
        assert select.select([], [w], [], 0.2)[1] == []
        assert len(os.read(r, 1000)) == 1000
        assert select.select([], [w], [], 1)[1] == [w]
        while select.select([r], [], [], 0)[0]:
            os.read(r, 65536)
    finally:
        os.close(w)
        os.close(r)


def test_o_nonblock_reads_and_writes_on_echo_say_eagain_instead_of_waiting(tree):
    r = os.open(tree.dev("echo"), os.O_RDONLY | os.O_NONBLOCK)
    w = os.open(tree.dev("echo"), os.O_WRONLY | os.O_NONBLOCK)
    try:
        while True:  # drain
            try:
                os.read(r, 65536)
            except BlockingIOError:
                break
        with pytest.raises(BlockingIOError):
            os.read(r, 10)
        assert os.write(w, b"abc") == 3
        assert os.read(r, 10) == b"abc"
        filled = 0
        with pytest.raises(BlockingIOError):
            while True:
                filled += os.write(w, bytes(8192))
        assert filled == 64 * 1024
        assert len(os.read(r, 65536)) == 65536
    finally:
        os.close(r)
        os.close(w)
    assert tree.stats()["verifier_violations"] == 0


def test_wdmfs_ioctl_takes_its_input_from_a_file(tree, tmp_path):
    data = tmp_path / "in.bin"
    data.write_bytes(b"from a file")
    r = run(tree, "ioctl", tree.dev("ioctl-demo"), "0x00222005", "--in-file", str(data), "--out-size", "11", "--raw")
    assert (r.returncode, r.stdout) == (0, "FROM A FILE")
    assert run(tree, "ioctl", tree.dev("ioctl-demo"), "0x00222005", "--in-file", str(tmp_path / "missing")).returncode == 2
    assert run(tree, "ioctl", tree.dev("ioctl-demo"), "0x00222005", "--in", "00", "--in-file", str(data)).returncode == 2


def test_the_ioctl_pages_python_snippet_works_as_shown(tree):
    import re
    from conftest import ROOT
    readme = open(os.path.join(ROOT, "docs", "ioctl.md")).read()
    snippet = re.search(r"```python\n(.*?)```", readme, re.S).group(1).replace("/mnt/wdm", tree.path)
    r = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "0x0 67108864"
