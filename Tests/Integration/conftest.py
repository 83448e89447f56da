"""Mounts for the integration tests: each under a fresh temporary directory,
always unmounted afterwards, even when a test fails."""
import contextlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: builds scratch projects (left out by WDMFS_FAST=1)")


def wdmfs_binary():
    env = os.environ.get("WDMFS_BIN")
    if env:
        return env
    for flavour in ("debug", "release"):
        p = os.path.join(ROOT, ".build", flavour, "wdmfs")
        if os.path.exists(p):
            return p
    pytest.fail("wdmfs is not built: run `swift build` first (or set WDMFS_BIN)")


def require_fuse():
    """A test that needs FUSE fails when it is missing: it never skips."""
    problems = []
    if not os.path.exists("/dev/fuse"):
        problems.append("/dev/fuse is missing")
    if shutil.which("fusermount3") is None:
        problems.append("fusermount3 is missing (apt-get install fuse3)")
    if problems:
        pytest.fail("FUSE is not usable here: " + "; ".join(problems))


def wdmfs_mounts():
    """The FUSE mounts of wdmfs test directories now in the system (any process's)."""
    with open("/proc/mounts") as f:
        return {m[1] for m in (line.split() for line in f) if m[2].startswith("fuse") and "wdmfs-" in m[1]}


@pytest.fixture(autouse=True)
def no_mount_is_left_behind():
    """Every test unmounts what it mounted, whatever happened: a mount still there
    after the test is an error of that test (named here, not at the end of the
    run), and it is detached so that the tests after it start clean."""
    before = wdmfs_mounts()
    yield
    left = sorted(wdmfs_mounts() - before, key=len, reverse=True)  # covers before the trees under them
    for mp in left:
        subprocess.run(["fusermount3", "-uz", mp], capture_output=True)
    if left:
        pytest.fail("the test left mounts behind: " + ", ".join(sorted(left)))


def is_mounted(path):
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == path for line in f)


class Mount:
    def __init__(self, path, log, wdmfs):
        self.path, self.log, self.wdmfs = path, log, wdmfs

    def dev(self, name):
        return os.path.join(self.path, name)

    def stats(self):
        with open(self.dev(".stats")) as f:
            return {k: int(v) for k, v in (line.split() for line in f if line.strip())}


# The numbers /proc/PID/syscall shows for the calls a test waits in.
SYSCALLS = {
    "x86_64": {"read": 0, "write": 1, "poll": 7, "ioctl": 16, "ppoll": 271},
    "aarch64": {"read": 63, "write": 64, "ioctl": 29, "ppoll": 73},
}.get(platform.machine(), {})


def blocked_in(pid, *calls):
    """Whether process (or thread: threading.get_native_id()) `pid` sleeps in one
    of the system calls `calls` ("read", "ioctl", ...): its state is S or D and
    /proc/PID/syscall names the call."""
    assert SYSCALLS, f"no system call numbers for {platform.machine()}"
    try:
        with open(f"/proc/{pid}/syscall") as f:
            nr = f.read().split()[0]  # "running" while it runs
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return proc_state(pid) in ("S", "D") and nr.isdigit() and int(nr) in {SYSCALLS[c] for c in calls if c in SYSCALLS}


def proc_state(pid):
    """The state letter of /proc/PID/stat: R running, S sleeping, D uninterruptible, Z zombie ("" if gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return ""


def wchan(pid):
    """Where in the kernel process (or thread) `pid` sleeps: /proc/PID/wchan, e.g.
    request_wait_answer (waiting for the daemon's answer), poll_schedule_timeout."""
    try:
        with open(f"/proc/{pid}/wchan") as f:
            return f.read()
    except (FileNotFoundError, ProcessLookupError):
        return ""


def wait_until(predicate, what, seconds=10.0):
    """Polls `predicate` with short sleeps until it holds; fails the test, saying
    `what` never came, if it does not within `seconds` (generous: the states the
    tests wait for come within milliseconds)."""
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"still not so after {seconds} s: {what}")
        time.sleep(0.01)


def mount_tree(extra=()):
    require_fuse()
    wdmfs = wdmfs_binary()
    path = tempfile.mkdtemp(prefix="wdmfs-test-")
    log = path + ".log"
    subprocess.run([wdmfs, "mount", path, "--log-file", log, *extra], check=True, capture_output=True, timeout=30)
    return Mount(path, log, wdmfs)


@contextlib.contextmanager
def scratch_mountpoint():
    """A fresh directory to mount on; afterwards whatever is still mounted there is
    detached and the directory removed, however the test ended."""
    mp = tempfile.mkdtemp(prefix="wdmfs-test-")
    try:
        yield mp
    finally:
        if is_mounted(mp):
            subprocess.run(["fusermount3", "-uz", mp], capture_output=True)
        os.rmdir(mp)


def unmount_tree(m):
    if is_mounted(m.path):
        subprocess.run([m.wdmfs, "unmount", m.path], capture_output=True, timeout=30)
    if is_mounted(m.path):
        subprocess.run(["fusermount3", "-uz", m.path], capture_output=True)
    for remove in (os.rmdir, os.remove):
        try:
            remove(m.path if remove is os.rmdir else m.log)
        except OSError:
            pass


@pytest.fixture(scope="module")
def tree():
    m = mount_tree()
    try:
        yield m
    finally:
        unmount_tree(m)


@pytest.fixture
def fresh_tree():
    m = mount_tree()
    try:
        yield m
    finally:
        unmount_tree(m)
