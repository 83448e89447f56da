"""Driver hosts (`isolation: host`): a device's driver in a process of its own.
A crash or a hang of one host leaves every other device serving, fails the
requests it had in flight with EIO (STATUS_DRIVER_PROCESS_TERMINATED through the
ioctl envelope), shows CM_PROB_FAILED_START with that status, starts the host
again and brings the device back, and stops starting it at the limit (5)."""
import os
import subprocess
import tempfile
import threading

import envelope as env
from conftest import mount_tree, unmount_tree, wait_until

STATUS_DRIVER_PROCESS_TERMINATED = 0xC0000450
# Misbehave's IOCTLs: CTL_CODE(FILE_DEVICE_UNKNOWN, 0x900 + n, METHOD_BUFFERED, FILE_ANY_ACCESS).
PEND_FOREVER = 0x0022240C
CRASH = 0x00222420
HANG_ON_POWER = 0x00222424
LATE_WRITES = 0x00222480

TREE = """devices:
  - name: disk
    hardware_ids: ['Root\\RamDisk']
    isolation: host
    settings: {Size: 1048576}
  - name: zero
    hardware_ids: ['Root\\Zero']
  - name: bad
    hardware_ids: ['Root\\Misbehave']
    isolation: host
    settings: {HostTimeout: 1}
"""


def mount_isolated():
    f = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
    f.write(TREE)
    f.close()
    try:
        return mount_tree(("--tree", f.name))
    finally:
        os.unlink(f.name)


def daemon(m):
    r = subprocess.run(["pgrep", "-f", f"mount {m.path} --foreground"], capture_output=True, text=True)
    return int(r.stdout.split()[0])


def hosts(m, pid=None):
    """The driver host processes of this mount's daemon."""
    r = subprocess.run(["pgrep", "-P", str(pid or daemon(m)), "-f", "driver-host"], capture_output=True, text=True)
    return [int(p) for p in r.stdout.split()]


def problem(m, node):
    with open(os.path.join(m.path, ".devices", node, "problem")) as f:
        return f.read().strip()


def others_serve(m):
    """The devices that did not crash still answer: the isolated disk and the zero device."""
    with open(m.dev("zero"), "rb") as f:
        assert f.read(4) == b"\0\0\0\0"
    fd = os.open(m.dev("disk"), os.O_RDWR)
    try:
        os.pwrite(fd, b"still here", 4096)
        assert os.pread(fd, 10, 4096) == b"still here"
    finally:
        os.close(fd)


def test_an_isolated_disk_serves_from_its_own_process():
    m = mount_isolated()
    try:
        pid = daemon(m)
        assert len(hosts(m)) == 2  # the disk's and bad's
        out = subprocess.run(["wdmfs" if False else m.wdmfs, "stack", m.path, "disk"], capture_output=True, text=True).stdout
        assert "\\Driver\\DriverHost" in out, out
        assert os.stat(m.dev("disk")).st_size == 1048576  # the size the host's RamDisk published
        data = os.urandom(65536)
        with open(m.dev("disk"), "r+b") as f:
            f.write(data)
        r = subprocess.run(["dd", f"if={m.dev('disk')}", "bs=65536", "count=1", "status=none"], capture_output=True)
        assert r.stdout == data
    finally:
        unmount_tree(m)
    assert hosts(m, pid) == []  # every host ends with the daemon


def test_a_crash_fails_what_was_in_flight_and_the_host_comes_back():
    m = mount_isolated()
    try:
        fd = os.open(m.dev("bad"), os.O_RDWR)
        waiting = {}
        t = threading.Thread(target=lambda: waiting.update(r=env.call(fd, PEND_FOREVER)))
        t.start()
        t.join(0.2)
        assert t.is_alive(), "the IOCTL pends in the host"
        before = hosts(m)
        status, _, _ = env.call(fd, CRASH)
        assert status == STATUS_DRIVER_PROCESS_TERMINATED, hex(status)
        t.join(10)
        assert waiting["r"][0] == STATUS_DRIVER_PROCESS_TERMINATED  # in flight when it crashed
        others_serve(m)
        # The old handle belongs to the dead host; the device comes back for new ones.
        wait_until(lambda: problem(m, "bad") == "0", "bad's host started again")
        # What the host printed as it died is in the daemon's log.
        with open(m.log) as f:
            assert "driver host of bad: " in f.read() and "Misbehave: IOCTL 0x222420 ends the process, as asked" in open(m.log).read()
        assert set(hosts(m)) != set(before)
        assert env.call(fd, LATE_WRITES, out_len=8)[0] == STATUS_DRIVER_PROCESS_TERMINATED
        os.close(fd)
        fd = os.open(m.dev("bad"), os.O_RDWR)
        assert env.call(fd, LATE_WRITES, out_len=8)[0] == env.STATUS_SUCCESS
        os.close(fd)
    finally:
        unmount_tree(m)


def test_a_host_that_ignores_a_cancel_is_killed_and_started_again():
    m = mount_isolated()
    try:
        fd = os.open(m.dev("bad"), os.O_RDWR)
        p = subprocess.Popen(["python3", "-c", f"""
import sys; sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})
import os, envelope as env
fd = os.open({m.dev('bad')!r}, os.O_RDWR)
env.call(fd, {PEND_FOREVER})
"""])
        wait_until(lambda: open(os.path.join(m.path, ".devices", "bad", "handles")).read().strip() == "2", "the caller opened bad")
        before = hosts(m)
        # The caller gives up (SIGINT: FUSE interrupts, the IRP is cancelled); the
        # host's driver never completes it; after HostTimeout (1 s) the host is killed
        # and started again.
        p.send_signal(2)
        p.wait(10)

        def log():
            with open(m.log) as f:
                return f.read()
        wait_until(lambda: "driver host of bad ended: starting it again" in log(), "the hung host killed")
        wait_until(lambda: problem(m, "bad") == "0" and len(hosts(m)) == 2 and set(hosts(m)) != set(before), "bad's host started again")
        others_serve(m)
        os.close(fd)
    finally:
        unmount_tree(m)


def set_power(m, state):
    with open(os.path.join(m.path, ".power"), "w") as f:
        f.write(state)


def test_a_host_that_hangs_on_a_power_request_is_killed_and_started_again():
    """A device's power IRPs reach its host's stack. Misbehave, told to, never
    completes the next device SET_POWER: the system's sleep (S3, so D3 for the
    device) waits HostTimeout (1 s) for the host, kills it and goes on; the host
    is started again, the wake (S0) reaches the new one, and the device serves."""
    m = mount_isolated()
    try:
        fd = os.open(m.dev("bad"), os.O_RDWR)
        assert env.call(fd, HANG_ON_POWER)[0] == env.STATUS_SUCCESS
        before = hosts(m)
        set_power(m, "S3")  # returns once every stack is in D3: bad's after the deadline

        def log():
            with open(m.log) as f:
                return f.read()
        assert "did not answer IRP_MN_SET_POWER D3 within 1 s: killed" in log()
        wait_until(lambda: "driver host of bad ended: starting it again" in log(), "the hung host killed")
        set_power(m, "S0")
        wait_until(lambda: problem(m, "bad") == "0" and len(hosts(m)) == 2 and set(hosts(m)) != set(before), "bad's host started again")
        assert env.call(fd, LATE_WRITES, out_len=8)[0] == STATUS_DRIVER_PROCESS_TERMINATED  # the old host's handle
        os.close(fd)
        fd = os.open(m.dev("bad"), os.O_RDWR)
        assert env.call(fd, LATE_WRITES, out_len=8)[0] == env.STATUS_SUCCESS
        os.close(fd)
        others_serve(m)
    finally:
        unmount_tree(m)


def test_a_host_that_hangs_in_start_is_killed_and_its_device_fails_to_start():
    """START not answered within HostTimeout: the host is killed, the device fails
    to start with STATUS_DRIVER_PROCESS_TERMINATED (a driver that hangs at every
    START is not started again and again), and the rest of the tree serves."""
    f = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
    f.write("""devices:
  - name: zero
    hardware_ids: ['Root\\Zero']
  - name: stuck
    hardware_ids: ['Root\\Misbehave']
    isolation: host
    settings: {HostTimeout: 1, HangAtStart: 1}
""")
    f.close()
    try:
        m = mount_tree(("--tree", f.name))
    finally:
        os.unlink(f.name)
    try:
        wait_until(lambda: problem(m, "stuck") != "0", "stuck's START given up")
        assert problem(m, "stuck") == "10 CM_PROB_FAILED_START STATUS_DRIVER_PROCESS_TERMINATED"
        r = subprocess.run([m.wdmfs, "status", m.path, "stuck", "--json"], capture_output=True, text=True)
        import json
        record = json.loads(r.stdout)[0]
        assert r.returncode == 1 and (record["problem"], record["problem_name"], record["problem_status"]) == \
            (10, "CM_PROB_FAILED_START", "STATUS_DRIVER_PROCESS_TERMINATED"), r
        with open(m.log) as log:
            assert "driver host of stuck did not answer IRP_MN_START_DEVICE within 1 s: killed" in log.read()
        assert hosts(m) == []  # killed, and not started again
        with open(m.dev("zero"), "rb") as z:
            assert z.read(4) == bytes(4)
    finally:
        unmount_tree(m)


def test_restarts_stop_at_the_limit_and_every_other_device_keeps_serving():
    m = mount_isolated()
    try:
        seen = set(hosts(m))
        for i in range(6):  # the first and 5 restarts
            # Serving again: a new host process (one the test has not seen) and no problem.
            wait_until(lambda: problem(m, "bad") == "0" and len(hosts(m)) == 2 and not set(hosts(m)) <= seen,
                       f"bad serving before crash {i + 1}") if i else None
            seen |= set(hosts(m))
            fd = os.open(m.dev("bad"), os.O_RDWR)
            assert env.call(fd, CRASH)[0] == STATUS_DRIVER_PROCESS_TERMINATED
            os.close(fd)
        wait_until(lambda: problem(m, "bad") != "0", "bad failed")
        assert problem(m, "bad") == "10 CM_PROB_FAILED_START STATUS_DRIVER_PROCESS_TERMINATED"
        with open(os.path.join(m.path, ".devices", "bad", "status")) as f:
            assert f.read().strip() == "problem"
        try:
            os.open(m.dev("bad"), os.O_RDWR)
            assert False, "a failed device opened"
        except OSError as e:
            assert e.errno == 5  # EIO
        assert len(hosts(m)) == 1  # the disk's
        others_serve(m)
        with open(m.log) as f:
            assert "not starting it again" in f.read()
    finally:
        unmount_tree(m)


SHARED_TREE = """devices:
  - {name: zero-host, hardware_ids: ['Root\\Zero'], isolation: host}
  - {name: demo-host, hardware_ids: ['Root\\IoctlDemo'], isolation: host}
  - name: quiet-disk
    hardware_ids: ['Root\\RamDisk']
    isolation: host
    settings: {Size: 1048576, HostSpin: 0}
"""


def mount_shared(*extra):
    f = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
    f.write(SHARED_TREE)
    f.close()
    try:
        return mount_tree(("--tree", f.name, *extra))
    finally:
        os.unlink(f.name)


def copied(m):
    return m.stats()["bytes_copied"]


def host_io(m):
    """Bytes the mount's driver hosts moved through read and write system calls
    (the socket, the doorbells): /proc/PID/io's rchar + wchar, summed."""
    total = 0
    for pid in hosts(m):
        with open(f"/proc/{pid}/io") as f:
            fields = dict(line.split(": ") for line in f.read().splitlines())
        total += int(fields["rchar"]) + int(fields["wchar"])
    return total


def test_isolated_reads_copy_nothing_and_writes_and_ioctls_copy_once():
    """The host fills a read where the daemon answers it from (memory both map):
    0 bytes copied. A write's data and an IOCTL's envelope are copied once, into
    that memory, when the request pends (the I/O manager's count)."""
    m = mount_shared()
    try:
        before, moved = copied(m), host_io(m)
        with open(m.dev("zero-host"), "rb", buffering=0) as f:
            for _ in range(64):
                assert f.read(65536) == bytes(65536)
        assert copied(m) == before, "reads from a host copy nothing"
        # 4 MiB read, and not through a socket or a pipe: at most doorbells (8 bytes each).
        assert host_io(m) - moved < 64 * 1024, host_io(m) - moved
        data = os.urandom(65536)
        fd = os.open(m.dev("quiet-disk"), os.O_RDWR)
        try:
            before, moved = copied(m), host_io(m)
            assert os.pwrite(fd, data, 0) == len(data)
            assert copied(m) - before == len(data), "a write's data is copied once"
            assert host_io(m) - moved < 4096, "the data did not go through the socket"
            before = copied(m)
            assert os.pread(fd, len(data), 0) == data
            assert copied(m) == before
        finally:
            os.close(fd)
        fd = os.open(m.dev("demo-host"), os.O_RDWR)
        try:
            for code in (0x00222000, 0x00222005, 0x0022200A, 0x0022200F):
                text = b"shared memory, method %d" % (code & 3)
                at = env.output_offset(code, len(text))
                capacity = (at + len(text)) if code & 3 in (1, 2) else len(text)
                before = copied(m)
                status, info, out = env.call(fd, code, text, out_len=len(text))
                assert (status, out) == (env.STATUS_SUCCESS, text.upper()), (hex(code), hex(status), out)
                assert copied(m) - before == env.HEADER.size + capacity, f"{code:#x}: one copy of the envelope"
        finally:
            os.close(fd)
        assert m.stats()["verifier_violations"] == 0, open(os.path.join(m.path, ".verifier")).read()
    finally:
        unmount_tree(m)


def test_buffers_outside_the_shared_memory_go_through_a_scratch_block():
    """With --bounce-buffers the I/O manager gives the stack bounce buffers of its
    own, which the host cannot see: the proxy copies them into a block of the shared
    memory and back (counted), and the data still arrives whole."""
    m = mount_shared("--bounce-buffers")
    try:
        fd = os.open(m.dev("quiet-disk"), os.O_RDWR)
        try:
            data = os.urandom(8192)
            assert os.pwrite(fd, data, 4096) == len(data)
            before = copied(m)
            assert os.pread(fd, len(data), 4096) == data
            assert copied(m) - before >= 2 * len(data), "the bounce buffer and the scratch block"
        finally:
            os.close(fd)
        fd = os.open(m.dev("demo-host"), os.O_RDWR)
        try:
            for code in (0x00222000, 0x00222005, 0x0022200A):
                text = b"bounced, method %d" % (code & 3)
                status, info, out = env.call(fd, code, text, out_len=len(text))
                assert (status, info, out) == (env.STATUS_SUCCESS, len(text), text.upper()), (hex(code), hex(status), info, out)
        finally:
            os.close(fd)
        assert m.stats()["verifier_violations"] == 0
    finally:
        unmount_tree(m)


def test_a_request_that_pends_past_the_spin_is_answered_through_the_doorbell():
    """IoctlDemo's inverted call pends in the host until another handle signals:
    the caller's thread has stopped waiting on the ring by then, so the answer
    comes through the daemon's reader. The disk spins never (HostSpin 0): every
    request and answer there rings a bell."""
    m = mount_shared()
    try:
        waiter = os.open(m.dev("demo-host"), os.O_RDWR)
        signaller = os.open(m.dev("demo-host"), os.O_RDWR)
        try:
            got = {}
            t = threading.Thread(target=lambda: got.update(r=env.call(waiter, 0x00222080, out_len=16)))
            t.start()
            t.join(0.3)
            assert t.is_alive(), "the inverted call pends in the host"
            status, _, released = env.call(signaller, 0x00222084, b"wake up", out_len=4)
            assert status == env.STATUS_SUCCESS and released == (1).to_bytes(4, "little"), (hex(status), released)
            t.join(10)
            assert got["r"][0] == env.STATUS_SUCCESS and got["r"][2] == b"wake up", got
        finally:
            os.close(waiter)
            os.close(signaller)
        fd = os.open(m.dev("quiet-disk"), os.O_RDWR)
        try:
            for i in range(200):
                block = bytes([i]) * 4096
                os.pwrite(fd, block, i * 4096)
                assert os.pread(fd, 4096, i * 4096) == block
        finally:
            os.close(fd)
    finally:
        unmount_tree(m)


def test_a_file_system_and_fio_with_verify_on_an_isolated_disk():
    """The isolated disk is a disk to real clients: its size (published by the host's
    RamDisk at START) lets losetup and fio use it; ext4 over a loop device keeps a
    tree of files; fio's random writes read back verified."""
    m = mount_isolated()
    loop = None
    target = tempfile.mkdtemp(prefix="wdmfs-iso-ext4.")
    try:
        r = subprocess.run(["fio", "--name=v", f"--filename={m.dev('disk')}", "--rw=randwrite", "--bs=4k", "--size=1M",
                            "--verify=crc32c", "--direct=1", "--ioengine=psync", "--output-format=terse"],
                           capture_output=True, text=True)
        assert r.returncode == 0 and r.stdout.split(";")[4] == "0", r.stdout + r.stderr  # field 5: total errors
        loop = subprocess.run(["losetup", "--find", "--show", m.dev("disk")], check=True, capture_output=True, text=True).stdout.strip()
        subprocess.run(["mkfs.ext4", "-q", "-F", "-b", "1024", loop], check=True, capture_output=True)
        subprocess.run(["mount", loop, target], check=True, capture_output=True)
        try:
            files = {f"f{i}": os.urandom(1000 * (i + 1)) for i in range(20)}
            for name, data in files.items():
                with open(os.path.join(target, name), "wb") as f:
                    f.write(data)
        finally:
            subprocess.run(["umount", target], check=True)
        subprocess.run(["blockdev", "--flushbufs", loop], check=True)
        r = subprocess.run(["e2fsck", "-fn", loop], capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr
        subprocess.run(["mount", "-o", "ro", loop, target], check=True, capture_output=True)
        try:
            for name, data in files.items():
                with open(os.path.join(target, name), "rb") as f:
                    assert f.read() == data
        finally:
            subprocess.run(["umount", target], check=True)
    finally:
        if loop:
            subprocess.run(["losetup", "-d", loop], capture_output=True)
        os.rmdir(target)
        unmount_tree(m)
