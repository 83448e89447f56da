"""Driver logging on a mount: levels per driver at mount (`--log-level`) and while
mounted (`wdmfs log-level`), each line in the daemon's log naming its driver."""
import os
import signal
import subprocess

from conftest import blocked_in, mount_tree, unmount_tree, wait_until, wdmfs_binary


def log(m):
    with open(m.log) as f:
        return f.read()


def test_levels_at_mount_and_while_mounted_and_each_line_names_its_driver():
    m = mount_tree(("--log-level", "info,RamDisk=debug"))
    try:
        assert "\\Driver\\RamDisk debug: ramdisk0: 67108864 bytes, direct I/O" in log(m)
        assert "\\Driver\\Echo trace" not in log(m)
        r = subprocess.run([wdmfs_binary(), "log-level", m.path, "Echo=trace"], capture_output=True, text=True)
        assert r.returncode == 0 and r.stdout == "log levels: Echo=trace\n", r.stderr
        cat = subprocess.Popen(["cat", m.dev("echo")], stdout=subprocess.DEVNULL)
        wait_until(lambda: blocked_in(cat.pid, "read"), "cat waiting on echo")
        wait_until(lambda: "\\Driver\\Echo trace: a read of" in log(m), "echo's trace line")
        cat.send_signal(signal.SIGINT)
        cat.wait(10)
        r = subprocess.run([wdmfs_binary(), "log-level", m.path, "Echo=loud"], capture_output=True, text=True)
        assert r.returncode == 2 and "the daemon refused `Echo=loud`" in r.stderr
        assert "log-level: `loud` is not a level" in log(m)
    finally:
        unmount_tree(m)


def test_a_bad_level_at_mount_is_refused_before_anything_is_mounted(tmp_path):
    mp = tmp_path / "mp"
    mp.mkdir()
    r = subprocess.run([wdmfs_binary(), "mount", str(mp), "--log-level", "loud"], capture_output=True, text=True)
    assert r.returncode == 2 and "--log-level: `loud` is not a level: trace, debug, info" in r.stderr
    assert not os.path.ismount(mp)
