"""What the core promises, seen through real system calls on a mounted tree:
every request is answered whatever a driver does, a pending request holds no
FUSE worker, verifier rules are reported when mounted, and the daemon's
plumbing (mount, unmount, logs) fails clearly instead of silently."""
import errno
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

import pytest

import envelope as env
from conftest import (ROOT, blocked_in, is_mounted, mount_tree, proc_state, require_fuse, unmount_tree, wait_until,
                      wdmfs_binary)

MISBEHAVE = {  # CTL_CODE(FILE_DEVICE_UNKNOWN, 0x900 + n, METHOD_BUFFERED, FILE_ANY_ACCESS)
    name: (0x22 << 16) | ((0x900 + n) << 2)
    for n, name in enumerate(["complete_twice", "pending_without_mark", "return_without_completing", "pend_forever",
                              "information_too_large", "complete_after_reuse", "marked_but_not_pending",
                              "keep_closes"])
}
WAIT_FOR_SIGNAL, SIGNAL_WAITERS = 0x00222080, 0x00222084
MISBEHAVE_LATE_WRITES = (0x22 << 16) | (0x920 << 2)


def late_writes(fd):
    """How many times misbehave wrote into a read buffer after completing the read."""
    status, information, out = env.call(fd, MISBEHAVE_LATE_WRITES, out_len=8)
    assert status == env.STATUS_SUCCESS and information == 8
    return int.from_bytes(out[:8], "little")


@pytest.fixture
def test_tree():
    m = mount_tree(("--tree", "test", "--verify", "all"))
    try:
        yield m
    finally:
        unmount_tree(m)


def foreground_daemon(log, *args):
    """A daemon in the foreground (so its exit status can be read) on a fresh
    directory, its stderr in `log`: (mount point, process)."""
    require_fuse()
    mp = tempfile.mkdtemp(prefix="wdmfs-test-")
    daemon = subprocess.Popen([wdmfs_binary(), "mount", mp, "--foreground", *args],
                              stderr=open(log, "w"), stdout=subprocess.DEVNULL)
    return mp, daemon


def log_text(m):
    with open(m.log) as f:
        return f.read()


def ioctl_in_child(path, code, out_len=0):
    """A process blocked in one ioctl; it prints the errno it got (or 0 and the status)."""
    script = (
        "import os, sys, struct, fcntl\n"
        f"sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})\n"
        "import envelope as env\n"
        "fd = os.open(sys.argv[1], os.O_RDWR)\n"
        "try:\n"
        f"    s, i, o = env.call(fd, {code}, out_len={out_len})\n"
        "    print(0, hex(s), flush=True)\n"
        "except OSError as e:\n"
        "    print(e.errno, flush=True)\n"
    )
    # A signal handler, so SIGINT interrupts the ioctl (EINTR) instead of killing the process.
    script = "import signal\nsignal.signal(signal.SIGINT, lambda *a: None)\n" + script
    return subprocess.Popen([sys.executable, "-c", script, path], stdout=subprocess.PIPE, text=True)


def wait_for(predicate, seconds=5.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


@pytest.mark.parametrize("bug", ["pend_forever", "return_without_completing"])
def test_a_caller_blocked_on_a_driver_that_ignores_cancel_is_answered_after_a_signal(test_tree, bug):
    m = test_tree
    before = m.stats()
    child = ioctl_in_child(m.dev("misbehave"), MISBEHAVE[bug])
    try:
        wait_until(lambda: child.poll() is not None
                   or (m.stats()["irps_pended"] > before["irps_pended"] and blocked_in(child.pid, "ioctl")),
                   "the ioctl stays with misbehave, its caller blocked in ioctl()")
        assert child.poll() is None  # blocked in the driver
        t0 = time.monotonic()
        child.send_signal(signal.SIGINT)
        out, _ = child.communicate(timeout=5)
        assert time.monotonic() - t0 < 3.0  # the grace period is 1 s
        assert out.split()[0] == str(errno.EINTR)
    finally:
        if child.poll() is None:
            child.kill()
    assert "neverCompleted" in log_text(m)
    # The daemon still serves.
    fd = os.open(m.dev("ramdisk0"), os.O_RDONLY)
    try:
        assert env.call(fd, env.IOCTL_DISK_GET_LENGTH_INFO, out_len=8)[0] == env.STATUS_SUCCESS
    finally:
        os.close(fd)


def test_sigterm_with_requests_outstanding_ends_the_daemon_cleanly(tmp_path):
    """An inverted-call ioctl waiting in ioctl-demo (cancellable), an ioctl a driver
    keeps forever (not cancellable), a writer waiting for room in echo: SIGTERM ends the daemon with exit 0
    within seconds, every caller is released, and every driver's Unload runs."""
    log = tmp_path / "daemon.log"
    mp, daemon = foreground_daemon(log, "--tree", "test")
    children = []
    try:
        assert wait_for(lambda: is_mounted(mp))
        children.append(ioctl_in_child(os.path.join(mp, "misbehave"), MISBEHAVE["pend_forever"]))
        children.append(ioctl_in_child(os.path.join(mp, "ioctl-demo"), WAIT_FOR_SIGNAL, out_len=4))
        children.append(subprocess.Popen(["dd", "if=/dev/zero", f"of={mp}/echo", "bs=64k", "count=4"],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))

        def pended():
            with open(os.path.join(mp, ".stats")) as f:
                return dict(line.split() for line in f if line.strip()).get("irps_pended", "0")
        assert wait_for(lambda: int(pended()) >= 3)  # all three wait in drivers...
        # ... each caller in its own call (the counter alone can be reached by echo's
        # writes before ioctl-demo's waiter has arrived).
        for c, call in zip(children, ("ioctl", "ioctl", "write")):
            wait_until(lambda: c.poll() is not None or blocked_in(c.pid, call), f"{c.args[0]} blocked in {call}()")
        assert all(c.poll() is None for c in children)
        t0 = time.monotonic()
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(10) == 0
        assert time.monotonic() - t0 < 5.0
        # Each caller is told ENODEV (not EINTR, which coreutils and Python retry into
        # ENOTCONN): the driver that ignores the cancel, and the writer whose wait
        # was cancelled. The inverted call's envelope carries STATUS_CANCELLED itself.
        assert children[0].communicate(timeout=5)[0].split() == [str(errno.ENODEV)]
        assert children[1].communicate(timeout=5)[0].split() == ["0", "0xc0000120"]
        _, err = children[2].communicate(timeout=5)
        assert "No such device" in err, err
        text = log.read_text()
        for driver in ["Null", "Zero", "RamDisk", "PassThroughFilter", "Echo", "IoctlDemo", "Misbehave", "LazyFilter"]:
            assert f"unloaded \\Driver\\{driver}" in text, text
        assert "neverCompleted" in text
        assert not is_mounted(mp)
    finally:
        for c in children:
            if c.poll() is None:
                c.kill()
        if daemon.poll() is None:
            daemon.kill()
        subprocess.run(["fusermount3", "-uz", mp], capture_output=True)
        os.rmdir(mp)


def test_two_hundred_pending_ioctls_do_not_starve_the_one_that_releases_them(tree):
    """Inverted calls: 200 IOCTLs wait in ioctl-demo (more than libfuse's 64 workers),
    then one more releases them all. Before, each waiting IOCTL held a worker."""
    n = 200
    results = []
    lock = threading.Lock()

    def waiter():
        fd = os.open(tree.dev("ioctl-demo"), os.O_RDWR)
        try:
            r = env.call(fd, WAIT_FOR_SIGNAL, b"w", out_len=5)
            with lock:
                results.append(r)
        finally:
            os.close(fd)

    before = tree.stats()
    threads = [threading.Thread(target=waiter) for _ in range(n)]
    for t in threads:
        t.start()
    assert wait_for(lambda: tree.stats()["irps_pended"] - before["irps_pended"] >= n, 20)
    fd = os.open(tree.dev("ioctl-demo"), os.O_RDWR)
    try:
        status, info, out = env.call(fd, SIGNAL_WAITERS, b"hello", out_len=4)
    finally:
        os.close(fd)
    assert status == env.STATUS_SUCCESS and int.from_bytes(out, "little") == n
    for t in threads:
        t.join(10)
    assert len(results) == n and all(r == (0, 5, b"hello") for r in results)
    after = tree.stats()
    # Each waiter's envelope (24 + 5 bytes) was copied once, when it pended; nothing else was.
    assert after["bytes_copied"] - before["bytes_copied"] == n * 29
    assert after["verifier_violations"] == before["verifier_violations"]


@pytest.mark.parametrize("bug,rule", [
    ("complete_twice", "completedTwice [bug check 0x44]"),
    ("pending_without_mark", "pendingWithoutMark [0xC9/0x23D]"),
    ("information_too_large", "informationExceedsBuffer [0xC9/0x312]"),
    ("marked_but_not_pending", "markedPendingReturnedOther [0xC9/0x23E]"),
    ("complete_after_reuse", "[bug check 0x44]"),
])
def test_verifier_rules_are_reported_when_mounted(test_tree, bug, rule):
    m = test_tree
    before = m.stats()["verifier_violations"]
    fd = os.open(m.dev("misbehave"), os.O_RDWR)
    try:
        status, info, out = env.call(fd, MISBEHAVE[bug], out_len=4)
        assert len(out) <= 4
        if bug == "complete_after_reuse":
            # The packet is reused while the driver still holds it (it completes it again
            # 50 ms later): keep reusing until the verifier has seen that completion.
            deadline = time.monotonic() + 10
            while m.stats()["verifier_violations"] == before and time.monotonic() < deadline:
                env.call(fd, env.IOCTL_DISK_GET_LENGTH_INFO, out_len=8)
                time.sleep(0.02)  # pacing, not a state: the reuses spread over the driver's 50 ms
    finally:
        os.close(fd)
    assert wait_for(lambda: m.stats()["verifier_violations"] > before)
    text = log_text(m)
    assert rule in text and "\\Driver\\Misbehave" in text and "IRP_MJ_DEVICE_CONTROL" in text, text


def test_a_filter_that_copies_nothing_is_reported_when_the_tree_is_built(test_tree):
    text = log_text(test_tree)
    assert "NotCopied [0xC9/0x2" in text and "\\Driver\\LazyFilter" in text
    with open(test_tree.dev("lazy-null"), "wb") as f:
        f.write(b"still works")


def test_checked_mode_catches_a_driver_that_keeps_a_read_buffer():
    m = mount_tree(("--tree", "test", "--checked"))
    try:
        fd = os.open(m.dev("misbehave"), os.O_RDONLY)
        assert os.pread(fd, 4096, 0) == b"M"
        # The driver writes into the buffer 20 ms after completing; it counts its late
        # writes and says how many on an ioctl of its own.
        assert wait_for(lambda: late_writes(fd) >= 1)
        with open(m.dev("zero"), "rb", buffering=0) as z:  # its own buffers: unharmed
            assert z.read(4096) == bytes(4096)
        assert "bufferWrittenAfterCompletion" not in log_text(m)
        os.pread(fd, 4096, 0)  # misbehave's next read takes the written buffer again
        os.close(fd)
        assert wait_for(lambda: "bufferWrittenAfterCompletion" in log_text(m))
        report = next(line for line in log_text(m).splitlines() if "bufferWrittenAfterCompletion" in line)
        assert "\\Driver\\Misbehave" in report, report  # the device's pool names its driver
    finally:
        unmount_tree(m)


def test_stats_read_in_small_pieces_under_load_is_always_well_formed(tree):
    stop = threading.Event()

    def load():
        with open(tree.dev("zero"), "rb", buffering=0) as z:
            while not stop.is_set():
                z.read(4096)

    t = threading.Thread(target=load)
    t.start()
    try:
        for _ in range(50):
            r = subprocess.run(["dd", f"if={tree.dev('.stats')}", "bs=7", "status=none"], capture_output=True, text=True)
            lines = r.stdout.splitlines()
            assert len(lines) == 10 and all(len(l.split()) == 2 and l.split()[1].isdigit() for l in lines), r.stdout
    finally:
        stop.set()
        t.join()


def test_chmod_chown_and_touch_fail_with_eperm_and_change_nothing(tree):
    path = tree.dev("null")
    mode = os.stat(path).st_mode
    for op in (lambda: os.chmod(path, 0o600), lambda: os.chown(path, 1, 1), lambda: os.utime(path, (1, 1))):
        with pytest.raises(PermissionError):
            op()
    assert os.stat(path).st_mode == mode
    with open(tree.dev("ramdisk0"), "r+b") as f:  # truncation is still ignored
        f.truncate(0)
    assert os.stat(tree.dev("ramdisk0")).st_size == 64 << 20


def run_wdmfs(*args, timeout=30):
    return subprocess.run([wdmfs_binary(), *args], capture_output=True, text=True, timeout=timeout)


def test_two_concurrent_mounts_of_one_directory_mount_once():
    require_fuse()
    mp = tempfile.mkdtemp(prefix="wdmfs-test-")
    try:
        procs = [subprocess.Popen([wdmfs_binary(), "mount", mp], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
        outs = [p.communicate(timeout=30) for p in procs]
        codes = sorted(p.returncode for p in procs)
        assert codes == [0, 2], outs
        loser = outs[[p.returncode for p in procs].index(2)][1]
        assert "already mounted" in loser or "being mounted" in loser
        with open("/proc/mounts") as f:
            assert sum(1 for line in f if line.split()[1] == mp) == 1
    finally:
        for _ in range(3):
            run_wdmfs("unmount", mp)
        subprocess.run(["fusermount3", "-uz", mp], capture_output=True)
        os.rmdir(mp)


def test_a_log_file_that_cannot_be_opened_fails_the_mount():
    require_fuse()
    mp = tempfile.mkdtemp(prefix="wdmfs-test-")
    try:
        r = run_wdmfs("mount", mp, "--log-file", "/nonexistent/dir/daemon.log")
        assert r.returncode == 2 and "cannot open the log file" in r.stderr
        assert not is_mounted(mp)
    finally:
        os.rmdir(mp)


def test_a_daemon_whose_log_reader_went_away_still_unloads_every_driver():
    """--foreground with stderr on a pipe whose reader is gone: no SIGPIPE death."""
    require_fuse()
    mp = tempfile.mkdtemp(prefix="wdmfs-test-")
    r, w = os.pipe()
    daemon = subprocess.Popen([wdmfs_binary(), "mount", mp, "--foreground"], stderr=w, stdout=subprocess.DEVNULL)
    os.close(w)
    try:
        assert wait_for(lambda: is_mounted(mp))
        os.close(r)  # the reader goes
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(10) == 0  # not killed by SIGPIPE while logging its unloads
    finally:
        if daemon.poll() is None:
            daemon.kill()
        subprocess.run(["fusermount3", "-uz", mp], capture_output=True)
        os.rmdir(mp)


def test_unmount_accepts_a_trailing_slash_and_does_not_wait_for_an_unreaped_daemon():
    """The daemon is this test's child and is never reaped: it is a zombie once it
    exits, and `wdmfs unmount` must see that it has exited."""
    require_fuse()
    mp = tempfile.mkdtemp(prefix="wdmfs-test-")
    daemon = subprocess.Popen([wdmfs_binary(), "mount", mp, "--foreground"],
                              stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: is_mounted(mp))
        t0 = time.monotonic()
        r = run_wdmfs("unmount", mp + "/")
        assert r.returncode == 0, r.stderr
        assert time.monotonic() - t0 < 5
        assert not is_mounted(mp)
    finally:
        daemon.wait(10)
        subprocess.run(["fusermount3", "-uz", mp], capture_output=True)
        os.rmdir(mp)


def test_mounting_over_a_dead_mount_recovers_it():
    require_fuse()
    mp = tempfile.mkdtemp(prefix="wdmfs-test-")
    try:
        assert run_wdmfs("mount", mp).returncode == 0
        pid = int(subprocess.run(["pgrep", "-f", f"mount {mp} --foreground"], capture_output=True, text=True).stdout.split()[0])
        os.kill(pid, signal.SIGKILL)
        assert wait_for(lambda: not os.path.exists(f"/proc/{pid}"))
        with pytest.raises(OSError) as e:
            os.listdir(mp)
        assert e.value.errno == errno.ENOTCONN
        r = run_wdmfs("mount", mp)
        assert r.returncode == 0, r.stderr
        assert "dead wdmfs mount" in r.stderr
        assert "zero" in os.listdir(mp)
    finally:
        run_wdmfs("unmount", mp)
        subprocess.run(["fusermount3", "-uz", mp], capture_output=True)
        os.rmdir(mp)


def test_a_non_empty_mountpoint_is_refused_unless_asked_for():
    require_fuse()
    mp = tempfile.mkdtemp(prefix="wdmfs-test-")
    marker = os.path.join(mp, "keep-me")
    open(marker, "w").close()
    try:
        r = run_wdmfs("mount", mp)
        assert r.returncode == 2 and "not empty" in r.stderr and "--nonempty" in r.stderr
        assert not is_mounted(mp)
        r = run_wdmfs("mount", mp, "--nonempty")
        assert r.returncode == 0, r.stderr
        assert "zero" in os.listdir(mp)
    finally:
        run_wdmfs("unmount", mp)
        os.remove(marker)
        os.rmdir(mp)


def test_client_code_does_not_link_libfuse():
    """WDMClient (the envelope, `wdmfs ioctl`'s code, process plumbing) depends on
    no target that reaches CFuse."""
    import json
    desc = json.loads(subprocess.run(["swift", "package", "describe", "--type", "json"], cwd=ROOT,
                                     capture_output=True, text=True, check=True).stdout)
    targets = {t["name"]: t for t in desc["targets"]}

    def closure(name, seen=None):
        seen = seen if seen is not None else set()
        for d in targets[name].get("target_dependencies", []):
            if d not in seen:
                seen.add(d)
                closure(d, seen)
        return seen

    assert "CFuse" not in closure("WDMClient")
    assert "CFuse" not in closure("WDM")
    assert "CFuse" in closure("WDMFuse")
    for f in os.listdir(os.path.join(ROOT, "Sources/WDMClient")):
        assert "import CFuse" not in open(os.path.join(ROOT, "Sources/WDMClient", f)).read()


@pytest.mark.parametrize("mode", ["auto", "on", "off"])
def test_io_uring_writes_cost_poll_round_trips_only_while_poll_is_on(mode):
    """With echo in the tree, --poll on keeps poll on the one connection and
    io_uring's attempts at a write each ask the daemon; --poll off answers the first
    FUSE_POLL with ENOSYS and the kernel stops asking for the whole mount; auto (the
    default) gives echo a connection of its own, so the RAM disk's connection stops
    asking while echo's poll still tells the truth."""
    m = mount_tree(("--poll", mode))
    try:
        before = m.stats()["fuse_polls"]
        subprocess.run(["fio", "--name=w", f"--filename={m.dev('ramdisk0')}", "--rw=randwrite", "--bs=4k",
                        "--size=16m", "--number_ios=200", "--ioengine=io_uring", "--iodepth=1"],
                       capture_output=True, text=True, timeout=300, check=True)
        polls = m.stats()["fuse_polls"] - before
        if mode == "on":
            assert polls >= 200  # at least one round trip per write
        else:
            assert polls <= 1
    finally:
        unmount_tree(m)


def test_poll_off_reports_every_file_ready_and_poll_on_tells_the_truth():
    import select
    for mode, empty_echo_readable in (("off", True), ("on", False), ("auto", False)):
        m = mount_tree(("--poll", mode))
        try:
            fd = os.open(m.dev("echo"), os.O_RDONLY | os.O_NONBLOCK)
            try:
                assert bool(select.select([fd], [], [], 0.2)[0]) == empty_echo_readable, mode
            finally:
                os.close(fd)
        finally:
            unmount_tree(m)


def covers(path):
    """The mounts directly under a tree: the files of devices with their own connection."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4].startswith(path + "/") and fields[fields.index("-") + 1] == "fuse.wdmfs":
                out.append(fields[4][len(path) + 1:])
    return out


def settle(m):
    """Returns once the PnP manager and the kernel notifications (and the covers
    made after them) are done."""
    with open(os.path.join(m.path, ".devices", ".control"), "w") as f:
        f.write("settle\n")


def echo_tells_the_truth(m):
    """An empty echo is not readable; after a write it is."""
    import select
    fd = os.open(m.dev("echo"), os.O_RDWR | os.O_NONBLOCK)
    try:
        while True:
            try:
                os.read(fd, 65536)
            except BlockingIOError:
                break
        empty = select.select([fd], [], [], 0)[0]
        os.write(fd, b"x")
        full = select.select([fd], [], [], 5)[0]
        os.read(fd, 1)
        return not empty and bool(full)
    finally:
        os.close(fd)


def test_echo_has_a_connection_of_its_own_that_follows_it_and_unmount_takes_it_off():
    """--poll auto: echo's file is a mount of a second FUSE connection over the
    tree's (another st_dev, the same inode number); it goes when echo is disabled
    and comes back with it; `wdmfs unmount` takes it off first, and when the tree
    is busy after all it puts it back."""
    m = mount_tree()
    try:
        assert covers(m.path) == ["echo"]
        assert os.stat(m.dev("echo")).st_dev != os.stat(m.dev("ramdisk0")).st_dev
        listed = {e.name: e.inode() for e in os.scandir(m.path)}
        assert listed["echo"] == os.stat(m.dev("echo")).st_ino
        assert m.stats()["poll_connection_files"] == 1
        assert echo_tells_the_truth(m)

        subprocess.run([m.wdmfs, "disable", m.path, "echo"], check=True, capture_output=True)
        assert covers(m.path) == [] and not os.path.exists(m.dev("echo"))
        subprocess.run([m.wdmfs, "enable", m.path, "echo"], check=True, capture_output=True)
        settle(m)
        assert covers(m.path) == ["echo"]
        assert echo_tells_the_truth(m)  # the new echo, not the one disabled

        for busy in ("ramdisk0", "echo"):
            fd = os.open(m.dev(busy), os.O_RDONLY)
            try:
                r = subprocess.run([m.wdmfs, "unmount", m.path], capture_output=True, text=True)
                assert r.returncode != 0 and "still open" in r.stderr
            finally:
                os.close(fd)
            settle(m)  # the daemon put the cover back
            assert covers(m.path) == ["echo"], busy
            assert echo_tells_the_truth(m)
        r = subprocess.run([m.wdmfs, "unmount", m.path], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        assert not is_mounted(m.path) and covers(m.path) == []
    finally:
        unmount_tree(m)


def test_an_o_nonblock_writer_behind_a_blocked_writer_waits_in_the_kernel_as_documented(tree):
    """The README's documented limitation, measured: while one writer waits in echo's
    driver, a second writer opened O_NONBLOCK sleeps in the kernel (the inode lock of a
    direct-I/O write past end of file) until the first completes; it is never lost."""
    w = os.open(tree.dev("echo"), os.O_WRONLY | os.O_NONBLOCK)
    r = os.open(tree.dev("echo"), os.O_RDONLY | os.O_NONBLOCK)
    try:
        while True:  # drain what earlier tests left, then fill
            try:
                os.read(r, 65536)
            except BlockingIOError:
                break
        filled = 0
        with pytest.raises(BlockingIOError):
            while True:
                filled += os.write(w, bytes(8192))
        pended = tree.stats()["irps_pended"]
        blocked = subprocess.Popen([sys.executable, "-c", f"import os; fd = os.open({tree.dev('echo')!r}, os.O_WRONLY); os.write(fd, b'a' * 100)"])
        wait_until(lambda: blocked.poll() is not None
                   or (tree.stats()["irps_pended"] > pended and blocked_in(blocked.pid, "write")),
                   "the first writer waits in echo for room, blocked in write()")
        assert blocked.poll() is None
        second = subprocess.Popen([sys.executable, "-c", "import os, sys\nfd = os.open(sys.argv[1], os.O_WRONLY | os.O_NONBLOCK)\n"
                                   "try:\n    print(os.write(fd, b'b'))\nexcept BlockingIOError:\n    print('EAGAIN')",
                                   tree.dev("echo")], stdout=subprocess.PIPE, text=True)
        # Not EAGAIN at once: it waits behind the first writer, uninterruptible, in the kernel.
        wait_until(lambda: second.poll() is not None or (blocked_in(second.pid, "write") and proc_state(second.pid) == "D"),
                   "the O_NONBLOCK writer sleeps (state D) in write() behind the first")
        assert second.poll() is None and blocked.poll() is None
        drained = 0
        while drained < 100:  # room for the first writer; then the second goes through
            try:
                drained += len(os.read(r, 65536))
            except BlockingIOError:
                time.sleep(0.01)
        assert blocked.wait(5) == 0
        out, _ = second.communicate(timeout=5)
        assert out.strip() in ("1", "EAGAIN")
    finally:
        while True:
            try:
                os.read(r, 65536)
            except (BlockingIOError, OSError):
                break
        os.close(w)
        os.close(r)


def test_a_tree_file_is_mounted_as_described(tmp_path):
    tree_file = tmp_path / "tree.yaml"
    tree_file.write_text(
        "devices:\n"
        "  - name: small\n"
        "    hardware_ids: ['Root\\RamDisk']\n"
        "    settings: {Size: 1048576}\n"
        "  - name: other\n"
        "    hardware_ids: ['Vendor\\Thing']\n"
        "    compatible_ids: ['GenDisk']\n"
        "    upper_filters: [PassThroughFilter]\n"
        "    link: disk-b\n"
        "    settings: {Size: 2097152}\n"
        "    mode: '0640'\n")
    m = mount_tree(("--tree", str(tree_file)))
    try:
        assert sorted(os.listdir(m.path)) == [".devices", ".interfaces", ".power", ".stats", ".trace", ".verifier", "disk-b", "small"]
        assert os.stat(m.dev("small")).st_size == 1 << 20
        st = os.stat(m.dev("disk-b"))
        assert st.st_size == 2 << 20 and st.st_mode & 0o777 == 0o640
        with open(m.dev("disk-b"), "r+b", buffering=0) as f:
            f.write(b"tree file")
            f.seek(0)
            assert f.read(9) == b"tree file"
    finally:
        unmount_tree(m)


def test_a_bad_tree_file_is_refused_before_anything_is_mounted(tmp_path):
    require_fuse()
    tree_file = tmp_path / "bad.yaml"
    tree_file.write_text("devices:\n  - name: a\n    hardware_ids: ['Root\\Null']\n    upper_filters: [Nope]\n")
    mp = tempfile.mkdtemp(prefix="wdmfs-test-")
    try:
        r = run_wdmfs("mount", mp, "--tree", str(tree_file))
        assert r.returncode == 2
        assert f"{tree_file}:4:" in r.stderr and "unknown driver `Nope`" in r.stderr, r.stderr
        assert not is_mounted(mp)
        r = run_wdmfs("tree", "--check", str(tree_file))
        assert r.returncode == 2 and "unknown driver" in r.stderr
        default = run_wdmfs("tree", "--print-default").stdout
        good = tmp_path / "default.yaml"
        good.write_text(default)
        assert run_wdmfs("tree", "--check", str(good)).returncode == 0
    finally:
        os.rmdir(mp)


def test_a_toaster_plugged_in_appears_and_unplugged_gives_its_reader_enodev(tree):
    bus = tree.dev("toaster-bus")
    r = run_wdmfs("plug", bus, "3")
    assert r.returncode == 0 and r.stdout.strip() == "toaster3", r.stderr
    assert "toaster3" in os.listdir(tree.path)
    fd = os.open(tree.dev("toaster3"), os.O_RDWR)
    try:
        os.write(fd, b"bread")
        assert os.pread(fd, 100, 0) == b"toaster3: 1 slices toasted\n"
        assert run_wdmfs("unplug", bus, "3").returncode == 0
        with pytest.raises(OSError) as e:
            os.pread(fd, 100, 0)
        assert e.value.errno == errno.ENODEV
    finally:
        os.close(fd)
    assert wait_for(lambda: "toaster3" not in os.listdir(tree.path))
    with pytest.raises(FileNotFoundError):
        os.open(tree.dev("toaster3"), os.O_RDONLY)
    r = run_wdmfs("unplug", bus, "3")
    assert r.returncode == 1 and "STATUS_NO_SUCH_DEVICE" in r.stderr
    # Plugged in again, it is a new file.
    assert run_wdmfs("plug", bus, "3").returncode == 0
    assert "toaster3" in os.listdir(tree.path)
    assert run_wdmfs("unplug", bus, "0").returncode == 0
    assert wait_for(lambda: "toaster3" not in os.listdir(tree.path))


def test_a_framework_toaster_serves_like_the_wdm_one_through_the_mount(tree):
    """ToasterFx, the toaster on the framework (WDF), for a toaster plugged in with
    its hardware ID: cat and a write through the mount, a reader blocked in read(2)
    until bread comes, and ENODEV to a blocked reader when it is unplugged."""
    import threading
    bus = tree.dev("toaster-bus")
    fx_id = "{B85B7C50-6A01-11d2-B841-00C04FAD5171}\\MsToasterFx"
    r = run_wdmfs("plug", bus, "7", "--hardware-id", fx_id)
    assert r.returncode == 0 and r.stdout.strip() == "toaster7", r.stderr
    stack = run_wdmfs("stack", tree.path, "toaster7").stdout
    assert "\\Driver\\ToasterFx" in stack, stack
    fd = os.open(tree.dev("toaster7"), os.O_RDWR)
    try:
        got = {}
        reader = threading.Thread(target=lambda: got.update(data=os.pread(fd, 100, 0)))
        reader.start()
        reader.join(0.2)
        assert reader.is_alive(), "a read with no bread waits"
        os.write(fd, b"bread")
        reader.join(10)
        assert got.get("data") == b"toaster7: 1 slices toasted\n"
        assert subprocess.run(["cat", tree.dev("toaster7")], capture_output=True).stdout == b"toaster7: 1 slices toasted\n"
        # A second toaster's reader, blocked when it is unplugged, gets ENODEV.
        assert run_wdmfs("plug", bus, "8", "--hardware-id", fx_id).returncode == 0
        fd8 = os.open(tree.dev("toaster8"), os.O_RDONLY)
        try:
            err = {}

            def blocked():
                try:
                    os.pread(fd8, 100, 0)
                except OSError as e:
                    err["errno"] = e.errno
            t = threading.Thread(target=blocked)
            t.start()
            t.join(0.2)
            assert t.is_alive()
            assert run_wdmfs("unplug", bus, "8").returncode == 0
            t.join(10)
            assert err.get("errno") == errno.ENODEV
        finally:
            os.close(fd8)
    finally:
        os.close(fd)
    assert run_wdmfs("unplug", bus, "0").returncode == 0
    assert wait_for(lambda: not any(n.startswith("toaster") and n != "toaster-bus" for n in os.listdir(tree.path)))


def daemon_pid(m):
    return int(subprocess.run(["pgrep", "-f", f"mount {m.path} --foreground"], capture_output=True, text=True).stdout.split()[0])


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))


def test_a_thousand_toasters_plugged_and_unplugged_leave_nothing_behind(tree):
    """1,000 plug / open / read / close / unplug cycles through the mount: the names
    come and go, and the daemon's memory and descriptors end where they were."""
    import struct
    bus = os.open(tree.dev("toaster-bus"), os.O_RDONLY)
    pid = daemon_pid(tree)
    ids = "{B85B7C50-6A01-11d2-B841-00C04FAD5171}\\MsToaster".encode("utf-16-le") + b"\0\0\0\0"

    def cycle(serial):
        assert env.call(bus, 0x002A4000, struct.pack("<II", 8, serial) + ids)[0] == env.STATUS_SUCCESS
        path = tree.dev(f"toaster{serial}")
        assert wait_for(lambda: os.path.exists(path))
        fd = os.open(path, os.O_RDWR)
        os.write(fd, b"bread")
        assert os.pread(fd, 100, 0).startswith(b"toaster")
        os.close(fd)
        assert env.call(bus, 0x002A4004, struct.pack("<IIII", 16, serial, 0, 0))[0] == env.STATUS_SUCCESS

    try:
        for i in range(1, 51):  # warm up pools and caches
            cycle(i)
        rss_before, fds_before = rss_kib(pid), len(os.listdir(f"/proc/{pid}/fd"))
        for i in range(51, 1051):
            cycle(i)
        assert wait_for(lambda: not any(n.startswith("toaster") and n != "toaster-bus" for n in os.listdir(tree.path)))
        rss_after, fds_after = rss_kib(pid), len(os.listdir(f"/proc/{pid}/fd"))
    finally:
        os.close(bus)
    print(f"daemon RSS {rss_before} KiB -> {rss_after} KiB over 1000 cycles; fds {fds_before} -> {fds_after}")
    assert fds_after == fds_before
    assert rss_after - rss_before < 4096  # no per-toaster leak (1,000 leaked stacks would be far more)
    assert tree.stats()["verifier_violations"] == 0


def test_io_waits_while_the_system_sleeps_and_completes_when_it_wakes(tree):
    assert run_wdmfs("power", tree.path).stdout.strip() == "S0"
    assert run_wdmfs("power", tree.path, "S3").returncode == 0
    try:
        with open(tree.dev(".power")) as f:
            assert f.read().strip() == "S3"
        pended = tree.stats()["irps_pended"]
        reader = subprocess.Popen(["dd", f"if={tree.dev('zero')}", "bs=8", "count=1", "status=none"], stdout=subprocess.PIPE)
        wait_until(lambda: reader.poll() is not None or (tree.stats()["irps_pended"] > pended and blocked_in(reader.pid, "read")),
                   "the read waits at the top of zero's stack, dd blocked in read()")
        assert reader.poll() is None  # waiting for D0
        # A caller that gives up while it waits is let go: its IRP completes with
        # STATUS_CANCELLED, which the envelope carries; the daemon keeps serving.
        pended = tree.stats()["irps_pended"]
        waiter = ioctl_in_child(tree.dev("ioctl-demo"), 0x00222000, out_len=0)
        wait_until(lambda: waiter.poll() is not None or (tree.stats()["irps_pended"] > pended and blocked_in(waiter.pid, "ioctl")),
                   "the ioctl waits at the top of ioctl-demo's stack, its caller blocked in ioctl()")
        assert waiter.poll() is None
        waiter.send_signal(signal.SIGINT)
        out, _ = waiter.communicate(timeout=5)
        assert out.split() == ["0", hex(0xC0000120)]
    finally:
        assert run_wdmfs("power", tree.path, "S0").returncode == 0
    assert reader.communicate(timeout=5)[0] == bytes(8)
    assert run_wdmfs("power", tree.path).stdout.strip() == "S0"
    r = run_wdmfs("power", tree.path, "S9")
    assert r.returncode == 2 and "unknown power state" in r.stderr


def test_the_device_tree_is_visible_and_scriptable(tree):
    bus = tree.dev("toaster-bus")
    assert run_wdmfs("plug", bus, "8").returncode == 0
    try:
        nodes = os.path.join(tree.path, ".devices")
        assert "toaster8" in os.listdir(os.path.join(nodes, "toaster-bus"))
        node = os.path.join(nodes, "toaster-bus", "toaster8")
        read = lambda f: open(os.path.join(node, f)).read()
        assert read("status") == "started\n" and read("problem") == "0\n" and read("power") == "D0\n"
        assert read("stack").split("\n")[:3] == ["\\Driver\\ClassUpperFilter", "\\Driver\\Toaster", "\\Driver\\ToasterBus \\Device\\Toaster8"]
        assert read("hardware_ids") == "{B85B7C50-6A01-11d2-B841-00C04FAD5171}\\MsToaster\n"
        assert "  toaster8" in run_wdmfs("tree", tree.path).stdout.splitlines()
        assert run_wdmfs("status", tree.path, "toaster8").stdout == "toaster8: started\n"
        assert run_wdmfs("stack", tree.path, "ramdisk0").stdout == \
            "ramdisk0: \\Driver\\PassThroughFilter > \\Driver\\RamDisk > \\Driver\\PnpManager\n"
        fd = os.open(tree.dev("toaster8"), os.O_RDWR)
        os.write(fd, b"bread")
        try:
            assert read("handles") == "1\n"
            r = run_wdmfs("remove", tree.path, "toaster8")  # in use: the open handle vetoes, as on Windows
            assert r.returncode == 1 and "vetoed by toaster8, PNP_VetoOutstandingOpen: 1 handle open" in r.stderr, r.stderr
            assert os.pread(fd, 100, 0).startswith(b"toaster8")  # still working
        finally:
            os.close(fd)
        r = run_wdmfs("remove", tree.path, "toaster8")
        assert r.returncode == 0 and r.stdout == "toaster8: removed\n"
        assert wait_for(lambda: "toaster8" not in os.listdir(tree.path))
        assert run_wdmfs("status", tree.path, "toaster8").returncode == 2  # no such node
    finally:
        run_wdmfs("unplug", bus, "0")


def test_disable_enable_and_restart_from_the_shell(tree):
    r = run_wdmfs("disable", tree.path, "echo")
    assert r.returncode == 0 and r.stdout == "echo: disabled\n"
    try:
        assert wait_for(lambda: "echo" not in os.listdir(tree.path))
        assert run_wdmfs("status", tree.path, "echo").stdout == "echo: disabled, problem 22 CM_PROB_DISABLED\n"
        assert run_wdmfs("status", tree.path, "echo").returncode == 1
    finally:
        assert run_wdmfs("enable", tree.path, "echo").returncode == 0
    assert wait_for(lambda: "echo" in os.listdir(tree.path))
    assert run_wdmfs("status", tree.path, "echo").stdout == "echo: started\n"
    r = run_wdmfs("restart", tree.path, "ramdisk0")
    assert r.returncode == 0 and r.stdout == "ramdisk0: restarted\n"
    with open(tree.dev("ramdisk0"), "rb") as f:
        assert len(f.read(512)) == 512


def test_the_tree_files_the_docs_show_are_valid(tmp_path):
    import re
    blocks = re.findall(r"```yaml\n(.*?)```", open(os.path.join(ROOT, "docs", "tree-files.md")).read(), re.S)
    assert len(blocks) >= 2
    for i, text in enumerate(blocks):
        path = tmp_path / f"readme{i}.yaml"
        path.write_text(text)
        r = run_wdmfs("tree", "--check", str(path))
        assert r.returncode == 0, (text, r.stderr)


def test_the_toaster_filter_logs_the_pnp_order_under_the_mount(tmp_path):
    tree_file = tmp_path / "filters.yaml"
    tree_file.write_text(
        "classes:\n"
        "  Toaster: {upper_filters: [ClassUpperFilter], lower_filters: [ClassLowerFilter]}\n"
        "devices:\n"
        "  - name: toaster-bus\n"
        "    hardware_ids: ['Root\\ToasterBus']\n"
        "    upper_filters: [BusUpperFilter]\n")
    m = mount_tree(("--tree", str(tree_file)))
    try:
        assert run_wdmfs("plug", m.dev("toaster-bus"), "1").returncode == 0
        log = open(os.path.join(m.path, ".devices", "toaster-bus", "toaster1", "filter.log")).read().splitlines()
        assert [l for l in log if l.endswith("START_DEVICE")] == ["ClassUpperFilter IRP_MN_START_DEVICE", "ClassLowerFilter IRP_MN_START_DEVICE"]
        bus_log = open(os.path.join(m.path, ".devices", "toaster-bus", "filter.log")).read().splitlines()
        assert "BusUpperFilter IRP_MN_START_DEVICE" in bus_log
        assert "BusUpperFilter IRP_MN_QUERY_DEVICE_RELATIONS" in bus_log
    finally:
        unmount_tree(m)


def test_scripts_find_devices_by_interface_class(tree):
    toaster_class = os.path.join(tree.path, ".interfaces", "{781EF630-72B2-11d2-B852-00C04FAD5171}")
    assert "{D35F7840-6A0C-11d2-B841-00C04FAD5171}" in os.listdir(os.path.join(tree.path, ".interfaces"))
    assert run_wdmfs("plug", tree.dev("toaster-bus"), "6").returncode == 0
    try:
        link = os.path.join(toaster_class, "toaster6")
        assert os.readlink(link) == "../../toaster6"
        with open(link, "r+b", buffering=0) as f:  # opening through the interface opens the device
            f.write(b"bread")
            f.seek(0)
            assert f.read().startswith(b"toaster6")
    finally:
        run_wdmfs("unplug", tree.dev("toaster-bus"), "0")
    assert wait_for(lambda: not os.path.exists(os.path.join(toaster_class, "toaster6")))


def test_a_reader_waiting_in_a_toaster_gets_enodev_when_it_is_unplugged(tree):
    bus = tree.dev("toaster-bus")
    assert run_wdmfs("plug", bus, "9").returncode == 0
    pended = tree.stats()["irps_pended"]
    reader = subprocess.Popen([sys.executable, "-c", "import os, sys\nfd = os.open(sys.argv[1], os.O_RDONLY)\n"
                               "try:\n    os.read(fd, 100)\n    print('read')\nexcept OSError as e:\n    print(e.errno)",
                               tree.dev("toaster9")], stdout=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: reader.poll() is not None or (tree.stats()["irps_pended"] > pended and blocked_in(reader.pid, "read")),
                   "the read waits in the toaster, its caller blocked in read()")
        assert reader.poll() is None  # waiting for bread
        assert run_wdmfs("unplug", bus, "9").returncode == 0
        out, _ = reader.communicate(timeout=5)
        assert out.strip() == str(errno.ENODEV)
        assert wait_for(lambda: "toaster9" not in os.listdir(tree.path))
        with pytest.raises(FileNotFoundError):
            os.open(tree.dev("toaster9"), os.O_RDONLY)  # a later open fails
    finally:
        if reader.poll() is None:
            reader.kill()


def test_disabling_a_device_someone_has_open_is_vetoed_and_it_keeps_serving(tree):
    """As on Windows since 2000, an open handle vetoes removal and disable
    (PNP_VetoOutstandingOpen): the reader waiting in echo stays where it is,
    echo keeps serving, and once the handle is closed disable works."""
    r = os.open(tree.dev("echo"), os.O_RDONLY | os.O_NONBLOCK)
    try:
        while True:
            os.read(r, 65536)
    except BlockingIOError:
        pass
    finally:
        os.close(r)
    before = tree.stats()["irps_pended"]
    reader = subprocess.Popen([sys.executable, "-c", "import os, sys\nfd = os.open(sys.argv[1], os.O_RDONLY)\n"
                               "print(os.read(fd, 10).decode())", tree.dev("echo")], stdout=subprocess.PIPE, text=True)
    try:
        assert wait_for(lambda: tree.stats()["irps_pended"] > before)  # the reader waits in echo
        r = run_wdmfs("disable", tree.path, "echo")
        assert r.returncode == 1 and "vetoed by echo, PNP_VetoOutstandingOpen: 1 handle open" in r.stderr, r.stderr
        assert run_wdmfs("status", tree.path, "echo").stdout == "echo: started\n"
        with open(tree.dev("echo"), "wb", buffering=0) as w:
            w.write(b"still")
        out, _ = reader.communicate(timeout=5)
        assert out.strip() == "still"
    finally:
        if reader.poll() is None:
            reader.kill()
            reader.wait()
    assert run_wdmfs("disable", tree.path, "echo").returncode == 0
    assert run_wdmfs("enable", tree.path, "echo").returncode == 0
    assert wait_for(lambda: "echo" in os.listdir(tree.path))
    fd = os.open(tree.dev("echo"), os.O_RDWR)
    try:
        os.write(fd, b"back")
        assert os.read(fd, 4) == b"back"
    finally:
        os.close(fd)


@pytest.mark.parametrize("poll, umount", [("on", ["umount"]), ("auto", ["umount", "-l"])])
def test_an_unmount_ends_the_daemon_even_when_a_driver_keeps_a_close(tmp_path, poll, umount):
    """The last close of a handle waits in a driver forever (the kernel sends
    RELEASE and does not wait). An unmount by the system's tool must still end the
    daemon: the end of the connection is heard at once (the mount table, then
    /dev/fuse), the waiting CLOSE is given up after the grace, and the daemon exits.
    (With echo's own connection mounted over its file, a plain umount finds the
    tree busy, as documented; umount -l takes both.)"""
    log = tmp_path / "daemon.log"
    mp, daemon = foreground_daemon(log, "--tree", "test", "--poll", poll)
    try:
        assert wait_for(lambda: is_mounted(mp))
        fd = os.open(os.path.join(mp, "misbehave"), os.O_RDWR)
        assert env.call(fd, MISBEHAVE["keep_closes"])[0] == env.STATUS_SUCCESS
        os.close(fd)

        def pended():
            with open(os.path.join(mp, ".stats")) as f:
                return int(dict(line.split() for line in f if line.strip())["irps_pended"])
        assert wait_for(lambda: pended() >= 1)  # the CLOSE waits in the driver
        t0 = time.monotonic()
        subprocess.run([*umount, mp], check=True, capture_output=True)
        assert daemon.wait(10) == 0
        assert time.monotonic() - t0 < 5.0
        assert "a synchronous request abandoned at shutdown" in log.read_text()
    finally:
        if daemon.poll() is None:
            daemon.kill()
        if is_mounted(mp):
            subprocess.run(["fusermount3", "-uz", mp], capture_output=True)
        os.rmdir(mp)
