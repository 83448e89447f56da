"""The device tree with one owner, seen through real system calls: inputs that
used to kill the daemon (ioctl, fsync and select on virtual files, an ioctl on a
handle whose toaster went away, `.devices` walked while toasters come and go, a
shutdown during a plug/unplug storm), removal as Windows does it (an open handle
vetoes, a removed device comes back on a rescan from the root) and a busy bus."""
import errno
import os
import select
import signal
import subprocess
import threading
import tempfile

import pytest

import envelope as env
from conftest import is_mounted, mount_tree, unmount_tree
from test_core_mounted import daemon_pid, run_wdmfs, wait_for

STATUS_NO_SUCH_DEVICE = 0xC000000E


def serving(m):
    """The daemon answers: zero reads as zeros."""
    with open(m.dev("zero"), "rb") as f:
        return f.read(4) == bytes(4)


def test_ioctl_fsync_and_select_on_virtual_files_are_answered_and_the_daemon_serves_on(tree):
    for name in (".stats", ".power", ".devices/null/status", ".devices/toaster-bus/hardware_ids"):
        fd = os.open(tree.dev(name), os.O_RDONLY)
        try:
            with pytest.raises(OSError) as e:
                env.call(fd, env.IOCTL_DISK_GET_LENGTH_INFO, out_len=8)
            assert e.value.errno == errno.ENOTTY, name
            os.fsync(fd)
            r, w, _ = select.select([fd], [fd], [], 1)
            assert r == [fd] and w == [fd], name
        finally:
            os.close(fd)
    # An editor saving .power: a write, then fsync.
    assert subprocess.run(["dd", f"of={tree.dev('.power')}", "conv=fsync,notrunc", "status=none"], input=b"S0\n").returncode == 0
    r = subprocess.run([tree.wdmfs, "ioctl", tree.dev(".stats"), "IOCTL_DISK_GET_LENGTH_INFO", "--out-size", "8", "--read-only"],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "daemon" not in r.stderr.lower()
    assert serving(tree)


def test_an_ioctl_on_a_handle_whose_toaster_went_away_gets_no_such_device(tree):
    bus = tree.dev("toaster-bus")
    assert run_wdmfs("plug", bus, "21").returncode == 0
    fd = os.open(tree.dev("toaster21"), os.O_RDWR)
    try:
        assert run_wdmfs("unplug", bus, "21").returncode == 0
        status, _, _ = env.call(fd, env.IOCTL_DISK_GET_LENGTH_INFO, out_len=8)
        assert status == STATUS_NO_SUCH_DEVICE
        with pytest.raises(OSError) as e:
            os.pread(fd, 10, 0)
        assert e.value.errno == errno.ENODEV
    finally:
        os.close(fd)
    assert serving(tree)


def test_walking_the_device_tree_while_toasters_come_and_go_never_hurts_the_daemon(tree):
    bus = tree.dev("toaster-bus")
    stop = threading.Event()
    problems = []

    def walk():
        while not stop.is_set():
            for root, dirs, files in os.walk(os.path.join(tree.path, ".devices")):
                for f in files:
                    if f in ("control", ".control"):  # write-only
                        continue
                    try:
                        with open(os.path.join(root, f), "rb") as fh:
                            fh.read()
                    except FileNotFoundError:
                        pass  # the node went away between the listing and the open
                    except OSError as e:
                        problems.append(f"{root}/{f}: {e}")

    walkers = [threading.Thread(target=walk) for _ in range(2)]
    for t in walkers:
        t.start()
    try:
        for i in range(40):
            serial = str(30 + i % 4)
            run_wdmfs("plug", bus, serial)
            run_wdmfs("unplug", bus, serial)
    finally:
        stop.set()
        for t in walkers:
            t.join(timeout=30)
    assert not problems, problems[:5]
    assert serving(tree)
    names = os.listdir(os.path.join(tree.path, ".devices", "toaster-bus"))
    assert len(names) == len(set(names))


def test_a_shutdown_during_a_plug_and_lookup_storm_ends_the_daemon_and_its_clients():
    m = mount_tree()
    try:
        pid = daemon_pid(m)
        stop = threading.Event()

        def look():
            while not stop.is_set():
                for name in ("toaster40", "toaster41", "nosuch"):
                    try:
                        os.stat(m.dev(name))
                    except OSError:
                        pass

        def storm():
            while not stop.is_set():
                for s in ("40", "41"):
                    subprocess.run([m.wdmfs, "plug", m.dev("toaster-bus"), s], capture_output=True, timeout=30)
                    subprocess.run([m.wdmfs, "unplug", m.dev("toaster-bus"), s], capture_output=True, timeout=30)

        lookers = [threading.Thread(target=look, daemon=True) for _ in range(3)]
        plugger = threading.Thread(target=storm, daemon=True)
        for t in lookers + [plugger]:
            t.start()
        assert wait_for(lambda: os.path.exists(m.dev("toaster40")) or os.path.exists(m.dev("toaster41")), 10)
        os.kill(pid, signal.SIGTERM)
        # The daemon ends, and so does every client of the mount (none is left in D state).
        assert wait_for(lambda: not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z", 15)
        stop.set()
        for t in lookers + [plugger]:
            t.join(timeout=15)
            assert not t.is_alive()
    finally:
        unmount_tree(m)


def test_removing_a_device_someone_has_open_is_vetoed_and_a_root_rescan_brings_a_removed_one_back(tree):
    fd = os.open(tree.dev("echo"), os.O_RDWR)
    try:
        r = run_wdmfs("remove", tree.path, "echo")
        assert r.returncode == 1 and "vetoed by echo, PNP_VetoOutstandingOpen: 1 handle open" in r.stderr, r.stderr
        os.write(fd, b"ok")
        assert os.read(fd, 2) == b"ok"
    finally:
        os.close(fd)
    r = run_wdmfs("remove", tree.path, "echo")
    assert r.returncode == 0 and r.stdout == "echo: removed\n", r.stderr
    assert wait_for(lambda: "echo" not in os.listdir(tree.path))
    r = run_wdmfs("enable", tree.path, "echo")
    assert r.returncode == 2 and "no device node named echo" in r.stderr
    r = run_wdmfs("rescan", tree.path)
    assert r.returncode == 0, r.stderr
    assert wait_for(lambda: "echo" in os.listdir(tree.path))
    assert run_wdmfs("status", tree.path, "echo").stdout == "echo: started\n"


def test_a_second_disable_says_already_disabled(tree):
    assert run_wdmfs("disable", tree.path, "ioctl-demo").returncode == 0
    try:
        r = run_wdmfs("disable", tree.path, "ioctl-demo")
        # The bridge's `result` says it with the status; the command says only what happened.
        assert (r.returncode, r.stdout, r.stderr) == (1, "", "wdmfs: ioctl-demo: already disabled\n"), r
    finally:
        assert run_wdmfs("enable", tree.path, "ioctl-demo").returncode == 0
    r = run_wdmfs("enable", tree.path, "ioctl-demo")
    assert (r.returncode, r.stderr) == (1, "wdmfs: ioctl-demo: already enabled\n"), r


def test_plugging_while_someone_has_the_bus_open_says_the_bus_is_busy(tree):
    bus = tree.dev("toaster-bus")
    fd = os.open(bus, os.O_RDONLY)
    try:
        r = run_wdmfs("plug", bus, "50")
        assert r.returncode == 1 and "is busy" in r.stderr and "Permission denied" not in r.stderr, r.stderr
    finally:
        os.close(fd)
    assert run_wdmfs("plug", bus, "50").returncode == 0
    assert run_wdmfs("unplug", bus, "50").returncode == 0


def test_listings_the_kernel_caches_follow_the_tree_at_once(fresh_tree):
    """The kernel keeps directory listings (it opens directories itself and caches
    what readdir said): a directory that gains or loses a name is invalidated, so a
    listing right after `wdmfs plug` (which settles) shows the toaster, and right
    after an unplug does not. No waiting: the first listing after the verb is right."""
    m = fresh_tree
    bus = m.dev(".devices/toaster-bus")
    toaster_class = "{781EF630-72B2-11d2-B852-00C04FAD5171}"
    for _ in range(2):  # listed before, so a stale cached listing would be seen
        assert "toaster7" not in os.listdir(bus)
        assert "toaster7" not in os.listdir(m.path)
    r = run_wdmfs("plug", m.dev("toaster-bus"), "7")
    assert r.returncode == 0, r.stderr
    assert "toaster7" in os.listdir(bus)
    assert "toaster7" in os.listdir(m.path)
    assert "toaster7" in os.listdir(m.dev(".interfaces/" + toaster_class))
    assert "status" in os.listdir(bus + "/toaster7")
    r = run_wdmfs("unplug", m.dev("toaster-bus"), "7")
    assert r.returncode == 0, r.stderr
    assert wait_for(lambda: "toaster7" not in os.listdir(m.path))  # the PnP manager removes it on its thread
    assert "toaster7" not in os.listdir(bus)
    assert "toaster7" not in os.listdir(m.dev(".interfaces/" + toaster_class))


# ---- Permissions: other users reach the mount, each file's mode and owner decide ----

def as_user(user, *cmd, **kw):
    return subprocess.run(list(cmd), user=user, capture_output=True, text=True, timeout=30, **kw)


def test_other_users_reach_a_root_mount_and_each_files_mode_and_owner_decide(tmp_path):
    """Mounted by root (allow_other, default_permissions), as /dev is: nobody reads
    a 0666 device, is refused a 0600 one of root's, and owns one the tree gives it."""
    tree = tmp_path / "tree.yaml"
    tree.write_text(
        "devices:\n"
        "  - {name: null, hardware_ids: ['Root\\Null']}\n"
        "  - {name: zero, hardware_ids: ['Root\\Zero'], mode: '0600'}\n"
        "  - {name: mine, hardware_ids: ['Root\\Zero'], mode: '0600', owner: nobody}\n")
    m = mount_tree(("--tree", str(tree)))
    try:
        with open("/proc/mounts") as f:
            options = next(line.split()[3] for line in f if line.split()[1] == m.path)
        assert "allow_other" in options and "default_permissions" in options
        r = as_user("nobody", "head", "-c", "4", m.dev("null"))
        assert r.returncode == 0, r.stderr
        r = as_user("nobody", "head", "-c", "4", m.dev("zero"))
        assert r.returncode != 0 and "Permission denied" in r.stderr
        r = as_user("nobody", "head", "-c", "4", m.dev("mine"))
        assert r.returncode == 0 and r.stdout == "\0" * 4, r.stderr
        assert os.stat(m.dev("mine")).st_uid == 65534
        # Another user's wdmfs sees a wdmfs tree (it could not even reach it before).
        r = as_user("nobody", m.wdmfs, "status", m.path, "null")
        assert r.returncode == 0 and "null" in r.stdout, r.stdout + r.stderr
    finally:
        unmount_tree(m)


@pytest.fixture
def fuse_for_users():
    """/dev/fuse usable by every user (Debian's udev rule makes it 0666; this
    machine's is 0600), put back afterwards."""
    before = os.stat("/dev/fuse").st_mode & 0o777
    os.chmod("/dev/fuse", 0o666)
    try:
        yield
    finally:
        os.chmod("/dev/fuse", before)


def test_a_user_mounts_a_tree_of_their_own_and_fuse_conf_decides_who_else_reaches_it(tmp_path, fuse_for_users):
    wdmfs = wdmfs_binary_for_users()
    conf = "/etc/fuse.conf"
    saved = open(conf).read() if os.path.exists(conf) else None
    import pathlib
    top = pathlib.Path(tempfile.mkdtemp(prefix="wdmfs-user-"))  # not under pytest's 0700 tmp_path
    os.chmod(top, 0o755)
    for allowed in (False, True):
        mp = top / ("shared" if allowed else "private")
        mp.mkdir()
        os.chown(mp, 65534, 65534)
        with open(conf, "w") as f:
            f.write((saved or "") + ("\nuser_allow_other\n" if allowed else ""))
        try:
            r = as_user("nobody", wdmfs, "mount", str(mp), "--log-file", "/dev/null")
            assert r.returncode == 0, r.stdout + r.stderr
            assert is_mounted(str(mp))
            r = as_user("nobody", "head", "-c", "4", str(mp / "zero"))
            assert r.returncode == 0 and r.stdout == "\0" * 4, r.stderr
            with open("/proc/mounts") as f:
                options = next(line.split()[3] for line in f if line.split()[1] == str(mp))
            assert ("allow_other" in options) == allowed, options
            try:
                os.stat(mp / "zero")
                reached = True
            except PermissionError:
                reached = False
            assert reached == allowed  # even root is kept out of a private FUSE mount
            r = as_user("nobody", wdmfs, "unmount", str(mp))
            assert r.returncode == 0, r.stdout + r.stderr
            assert not is_mounted(str(mp))
        finally:
            if saved is None:
                os.remove(conf)
            else:
                with open(conf, "w") as f:
                    f.write(saved)
            if is_mounted(str(mp)):
                subprocess.run(["fusermount3", "-uz", str(mp)], capture_output=True)
            os.rmdir(mp)
    os.rmdir(top)


def wdmfs_binary_for_users():
    """The wdmfs binary, where another user can run it (a build under /root is not)."""
    from conftest import wdmfs_binary
    import shutil
    src = wdmfs_binary()
    r = subprocess.run(["runuser", "-u", "nobody", "--", src, "--help"], capture_output=True)
    if r.returncode == 0:
        return src
    dst = os.path.join(tempfile.mkdtemp(prefix="wdmfs-bin-"), "wdmfs")
    shutil.copy2(src, dst)
    os.chmod(os.path.dirname(dst), 0o755)
    return dst


def test_fstat_of_a_handle_whose_device_went_away_works_and_reads_say_no_such_device(fresh_tree):
    """On Linux fstat of an open descriptor does not fail: after the toaster is
    unplugged its handle still stats (link count 0), and `cat <&3` says
    "No such device", not "No such file or directory"."""
    m = fresh_tree
    assert run_wdmfs("plug", m.dev("toaster-bus"), "4").returncode == 0
    fd = os.open(m.dev("toaster4"), os.O_RDONLY)
    try:
        before = os.fstat(fd)
        assert before.st_nlink == 1
        assert run_wdmfs("unplug", m.dev("toaster-bus"), "4").returncode == 0
        assert wait_for(lambda: not os.path.exists(m.dev("toaster4")))
        after = os.fstat(fd)
        assert after.st_nlink == 0 and after.st_ino == before.st_ino and after.st_mode == before.st_mode
        with pytest.raises(OSError) as e:
            os.read(fd, 1)
        assert e.value.errno == errno.ENODEV
        r = subprocess.run(["bash", "-c", f"cat <&{fd}"], pass_fds=(fd,), capture_output=True, text=True)
        assert r.returncode != 0 and "No such device" in r.stderr, r.stderr
    finally:
        os.close(fd)
    os.stat(m.path)  # the daemon serves on
