"""The fault-injection filters on a real mount, seen from dd, cat, Python's os
calls, a loop device with ext4 and e2fsck, and an NBD client through nbdkit:
errors with the mapped errno at the chosen offsets, delays and rates measured,
corruption reproducible from its seed, filters attached and detached while a
reader streams, and a host-file disk under them."""
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time

import pytest

from conftest import mount_tree, unmount_tree, wait_until, wdmfs_binary

MiB = 1 << 20


@pytest.fixture(scope="module")
def faults():
    """A tree with a host-file disk under an error filter, RAM disks under a delay,
    a rate and a corrupt filter, and a plain RAM disk to attach filters to."""
    work = tempfile.mkdtemp(prefix="wdmfs-faults-")
    image = os.path.join(work, "disk.img")
    tree = os.path.join(work, "tree.yaml")
    with open(tree, "w") as f:
        f.write(f"""devices:
  - name: disk
    hardware_ids: ['Root\\HostFile']
    upper_filters: [ErrorFilter]
    settings: {{Path: '{image}', Size: {64 * MiB}, ErrorRate: 0}}
  - name: slow
    hardware_ids: ['Root\\RamDisk']
    upper_filters: [DelayFilter]
    settings: {{Size: {4 * MiB}, DelayMs: 50}}
  - name: limited
    hardware_ids: ['Root\\RamDisk']
    upper_filters: [RateFilter]
    settings: {{Size: {8 * MiB}, RateLimit: 2M}}
  - name: noisy
    hardware_ids: ['Root\\RamDisk']
    upper_filters: [CorruptFilter]
    settings: {{Size: {1 * MiB}, CorruptRate: 0}}
  - name: ramdisk0
    hardware_ids: ['Root\\RamDisk']
    settings: {{Size: {4 * MiB}}}
""")
    m = mount_tree(("--tree", tree))
    m.image = image
    try:
        yield m
    finally:
        unmount_tree(m)
        shutil.rmtree(work, ignore_errors=True)


def node_file(m, device, name):
    return os.path.join(m.path, ".devices", device, name)


def setting(m, device, filt, *lines):
    """Writes `key value` lines to a filter's settings file."""
    with open(node_file(m, device, filt), "w") as f:
        f.write("\n".join(lines) + "\n")


def settings(m, device, filt):
    with open(node_file(m, device, filt)) as f:
        return dict((l.split(" ", 1) + [""])[:2] for l in f.read().splitlines())


def pattern(offset, count):
    return bytes((i % 251) for i in range(offset, offset + count))


def fill(path, size):
    fd = os.open(path, os.O_WRONLY)
    try:
        for off in range(0, size, MiB):
            os.pwrite(fd, pattern(off, MiB), off)
    finally:
        os.close(fd)


def wdmfs(*args):
    return subprocess.run([wdmfs_binary(), *args], capture_output=True, text=True, timeout=60)


def dd_sector(path, sector):
    """Reads one 512-byte sector with O_DIRECT; True when it read."""
    r = subprocess.run(["dd", f"if={path}", "of=/dev/null", "bs=512", f"skip={sector}", "count=1", "iflag=direct", "status=none"],
                       capture_output=True, text=True)
    assert r.returncode == 0 or "Input/output error" in r.stderr, r.stderr
    return r.returncode == 0


def test_the_error_filter_fails_the_chosen_sectors_with_the_mapped_errno(faults):
    disk = faults.dev("disk")
    setting(faults, "disk", "error", "ranges 1M+2K", "rate 1")
    try:
        assert [dd_sector(disk, s) for s in range(2046, 2054)] == [True, True, False, False, False, False, True, True]
        fd = os.open(disk, os.O_RDWR)
        try:
            with pytest.raises(OSError) as e:
                os.pread(fd, 4096, MiB - 2048)
            assert e.value.errno == 5  # EIO: STATUS_DEVICE_DATA_ERROR by the errno table
            setting(faults, "disk", "error", "status STATUS_MEDIA_WRITE_PROTECTED", "majors write")
            with pytest.raises(OSError) as e:
                os.pwrite(fd, b"x" * 512, MiB)
            assert e.value.errno == 30  # EROFS
            assert len(os.pread(fd, 512, MiB)) == 512  # reads no longer fail
        finally:
            os.close(fd)
        s = settings(faults, "disk", "error")
        assert s["ranges"] == "1048576+2048" and s["majors"] == "write" and int(s["failed"]) == 6
    finally:
        setting(faults, "disk", "error", "rate 0", "majors read,write", "status STATUS_DEVICE_DATA_ERROR", "ranges all")


def test_a_bad_setting_is_refused_with_einval_and_the_reason_in_result(faults):
    with pytest.raises(OSError) as e:
        setting(faults, "disk", "error", "rate often")
    assert e.value.errno == 22
    with open(node_file(faults, "disk", "result")) as f:
        assert f.read() == "error: rate must be a decimal from 0 to 1, not `often`\n"
    assert settings(faults, "disk", "error")["rate"] == "0.0"
    with open(faults.log) as f:
        assert "disk/error: rate must be a decimal from 0 to 1, not `often`" in f.read()


def test_the_delay_filter_adds_its_delay_to_each_request(faults):
    fd = os.open(faults.dev("slow"), os.O_RDONLY)
    try:
        took = []
        for i in range(5):
            t = time.monotonic()
            assert len(os.pread(fd, 4096, i * 4096)) == 4096
            took.append(time.monotonic() - t)
        assert min(took) >= 0.050, took
        setting(faults, "slow", "delay", "ms 0")
        t = time.monotonic()
        os.pread(fd, 4096, 0)
        assert time.monotonic() - t < 0.050
        assert settings(faults, "slow", "delay")["delayed"] == "5"
    finally:
        setting(faults, "slow", "delay", "ms 50")
        os.close(fd)


def test_the_rate_filter_keeps_dd_within_ten_percent_of_its_limit(faults):
    t = time.monotonic()
    subprocess.run(["dd", f"if={faults.dev('limited')}", "of=/dev/null", "bs=128K", "count=32", "iflag=direct", "status=none"], check=True)
    rate = 4 * MiB / (time.monotonic() - t)
    assert 0.9 * 2 * MiB <= rate <= 1.1 * 2 * MiB, f"{rate / MiB:.2f} MiB/s"


def test_corruption_is_reproducible_from_its_seed(faults):
    noisy = faults.dev("noisy")
    fill(noisy, MiB)
    with open(noisy, "rb") as f:
        assert f.read() == pattern(0, MiB)

    def read_with(seed):
        setting(faults, "noisy", "corrupt", f"seed {seed}", "rate 0.001")
        with open(noisy, "rb") as f:
            return f.read()

    try:
        a, b, c = read_with(5), read_with(5), read_with(6)
        assert a == b != c
        clean = pattern(0, MiB)
        hit = [i for i in range(MiB) if a[i] != clean[i]]
        assert 700 <= len(hit) <= 1400, len(hit)  # about 0.1 percent of 1 MiB
        assert all(bin(a[i] ^ clean[i]).count("1") == 1 for i in hit)
        # The same bytes, read with dd in other sizes.
        setting(faults, "noisy", "corrupt", "seed 5")
        out = subprocess.run(["dd", f"if={noisy}", "bs=3000", "status=none"], check=True, capture_output=True).stdout
        assert out == a
    finally:
        setting(faults, "noisy", "corrupt", "rate 0")


def test_filters_attached_and_detached_while_a_reader_streams_lose_nothing(faults):
    dev = faults.dev("ramdisk0")
    fill(dev, 4 * MiB)
    expected = pattern(0, 4 * MiB)
    stop = threading.Event()
    result = {"passes": 0, "bad": []}

    def reader():
        while not stop.is_set():
            with open(dev, "rb", buffering=0) as f:
                data = b""
                while chunk := f.read(65536):
                    data += chunk
            if data != expected:
                result["bad"].append(len(data))
            result["passes"] += 1

    t = threading.Thread(target=reader)
    t.start()
    try:
        for i in range(10):
            filt, args = [("DelayFilter", ["ms=1"]), ("ErrorFilter", ["rate=0"]), ("CorruptFilter", ["rate=0"])][i % 3]
            r = wdmfs("attach", faults.path, "ramdisk0", filt, *args)
            assert r.returncode == 0, r.stderr
            with open(node_file(faults, "ramdisk0", "stack")) as f:
                assert f.readline() == f"\\Driver\\{filt}\n"
            passes = result["passes"]
            wait_until(lambda: result["passes"] > passes, "a whole pass of the reader through the filter")
            r = wdmfs("detach", faults.path, "ramdisk0", filt)
            assert r.returncode == 0 and r.stdout == f"ramdisk0: detached {filt}\n", r.stderr
    finally:
        stop.set()
        t.join(30)
    assert result["bad"] == [] and result["passes"] >= 10
    with open(node_file(faults, "ramdisk0", "stack")) as f:
        assert f.read().splitlines()[0] == "\\Driver\\RamDisk"


def test_attach_and_detach_refuse_what_they_cannot_do(faults):
    r = wdmfs("attach", faults.path, "ramdisk0", "NoSuchFilter")
    assert r.returncode == 1
    assert "no filter named NoSuchFilter: PassThroughFilter, ErrorFilter, DelayFilter, RateFilter, CorruptFilter" in r.stderr
    r = wdmfs("detach", faults.path, "ramdisk0", "RamDisk")
    assert r.returncode == 1 and "\\Driver\\RamDisk is not a filter of the stack" in r.stderr
    r = wdmfs("detach", faults.path, "ramdisk0", "ErrorFilter")
    assert r.returncode == 1 and "no \\Driver\\ErrorFilter in the stack" in r.stderr
    r = wdmfs("attach", faults.path, "ramdisk0", "ErrorFilter", "rate=2")
    assert r.returncode == 1 and "ramdisk0: attach ErrorFilter failed: rate must be a decimal from 0 to 1, not `2`" in r.stderr
    r = wdmfs("attach", faults.path, "ramdisk0", "ErrorFilter", "often=1")
    assert r.returncode == 1 and "ErrorFilter has no setting `often`: majors, ioctls, ranges, status, every, rate, seed, trigger" in r.stderr
    with open(node_file(faults, "ramdisk0", "stack")) as f:
        assert f.readline() == "\\Driver\\RamDisk\n"  # nothing was attached


def losetup(path):
    return subprocess.run(["losetup", "--find", "--show", path], check=True, capture_output=True, text=True).stdout.strip()


def test_ext4_on_a_loop_device_sees_the_bad_sectors_and_is_clean_once_they_are_cleared(faults):
    loop = losetup(faults.dev("disk"))
    try:
        subprocess.run(["mkfs.ext4", "-q", "-F", "-b", "1024", loop], check=True, capture_output=True)
        dump = subprocess.run(["dumpe2fs", loop], check=True, capture_output=True, text=True).stdout
        first = int(next(l for l in dump.splitlines() if "Inode table at" in l).split("at ")[1].split("-")[0])
        bad = (first + 1) * 1024  # the inode table's second block: 2 sectors of 512
        setting(faults, "disk", "error", f"ranges {bad}+1024", "rate 1")
        subprocess.run(["blockdev", "--flushbufs", loop], check=True)
        s = bad // 512
        assert [dd_sector(loop, x) for x in range(s - 1, s + 3)] == [True, False, False, True]
        r = subprocess.run(["e2fsck", "-fn", loop], capture_output=True, text=True)
        assert r.returncode & 8 or r.returncode & 4, r.stdout
        assert f"Error reading block {first + 1} (Input/output error)" in r.stdout + r.stderr
        setting(faults, "disk", "error", "rate 0")
        subprocess.run(["blockdev", "--flushbufs", loop], check=True)
        r = subprocess.run(["e2fsck", "-fn", loop], capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr
    finally:
        subprocess.run(["losetup", "-d", loop], capture_output=True)
        setting(faults, "disk", "error", "rate 0", "ranges all")


def test_an_nbd_client_reads_and_writes_the_disk_and_sees_the_filter_errors(faults):
    for tool in ("nbdkit", "nbdcopy"):
        assert shutil.which(tool), f"{tool} is missing (apt-get install nbdkit libnbd-bin)"
    work = tempfile.mkdtemp(prefix="wdmfs-nbd-")
    sock = os.path.join(work, "nbd.sock")
    uri = f"nbd+unix:///?socket={sock}"
    server = subprocess.Popen(["nbdkit", "--foreground", "--unix", sock, "file", faults.dev("disk")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: os.path.exists(sock) or server.poll() is not None, "nbdkit's socket")
        assert server.poll() is None, server.stderr.read()
        local = os.path.join(work, "data")
        with open(local, "wb") as f:
            f.write(pattern(7, 2 * MiB) + b"\0" * (62 * MiB))
        subprocess.run(["nbdcopy", local, uri], check=True, timeout=120)
        with open(faults.image, "rb") as f:
            assert f.read(2 * MiB) == pattern(7, 2 * MiB)  # through wdmfs, into the host file
        back = os.path.join(work, "back")
        subprocess.run(["nbdcopy", uri, back], check=True, timeout=120)
        with open(back, "rb") as f:
            assert f.read(2 * MiB) == pattern(7, 2 * MiB)
        setting(faults, "disk", "error", "ranges 1M+4K", "rate 1", "majors read")
        r = subprocess.run(["nbdcopy", uri, back], capture_output=True, text=True, timeout=120)
        assert r.returncode != 0 and "Input/output error" in r.stderr, r.stderr
    finally:
        setting(faults, "disk", "error", "rate 0", "ranges all", "majors read,write")
        server.terminate()
        server.wait(30)
        shutil.rmtree(work, ignore_errors=True)
