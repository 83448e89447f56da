"""Driver Verifier on a mount: opt-in per driver at mount (`--verify`) and while
mounted (`wdmfs verify`, the `.verifier` file), its reports in `.verifier` and
the log, and its actions (log, fail the IRP, bug check: the daemon ends)."""
import os
import signal
import subprocess

import envelope as env
from conftest import is_mounted, mount_tree, scratch_mountpoint, unmount_tree, wait_until, wdmfs_binary

# Misbehave's IOCTL that completes with Information 100 bytes past the output (0x312).
TOO_MUCH = (0x22 << 16) | ((0x900 + 4) << 2)


def verifier(m):
    with open(os.path.join(m.path, ".verifier")) as f:
        return f.read()


def too_much(m):
    fd = os.open(m.dev("misbehave"), os.O_RDWR)
    try:
        return env.call(fd, TOO_MUCH, out_len=4)[0]
    finally:
        try:
            os.close(fd)
        except OSError:
            pass  # after a bug check the daemon may be gone before the close reaches it


def run(*args):
    return subprocess.run([wdmfs_binary(), *args], capture_output=True, text=True, timeout=30)


def test_verifier_is_off_unless_asked_and_follows_wdmfs_verify():
    m = mount_tree(("--tree", "test"))
    try:
        assert verifier(m).startswith("verify none\naction log\nviolations 0\n")
        assert too_much(m) == env.STATUS_SUCCESS
        assert "informationExceedsBuffer" not in verifier(m)  # not verified: not checked

        r = run("verify", m.path, "Misbehave")
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith("verify Misbehave\n")
        too_much(m)
        text = verifier(m)
        line = next(l for l in text.splitlines() if "informationExceedsBuffer" in l)
        for part in ("[0xC9/0x312]", "IRP_MJ_DEVICE_CONTROL", "\\Driver\\Misbehave", "(misbehave)",
                     "location 2 of 2", "in IoCompleteRequest", "Information 104, output buffer 4"):
            assert part in line, (part, line)
        assert line in open(m.log).read()  # the daemon's log has it too

        r = run("verify", m.path, "Nosuch")
        assert r.returncode == 2 and "not loaded" in r.stderr
        assert "no driver named Nosuch is loaded" in open(m.log).read()
        assert verifier(m).startswith("verify Misbehave\n")  # unchanged

        assert run("verify", m.path, "none").returncode == 0
        before = verifier(m).count("\n")
        too_much(m)
        assert verifier(m).count("\n") == before
    finally:
        unmount_tree(m)


def test_the_fail_action_fails_the_irp_the_caller_sees_it():
    m = mount_tree(("--tree", "test", "--verify", "Misbehave", "--verifier-action", "fail"))
    try:
        assert too_much(m) == 0xC0000183  # STATUS_DRIVER_INTERNAL_ERROR, carried unchanged
        assert "(failed the IRP: STATUS_DRIVER_INTERNAL_ERROR)" in verifier(m)
        with open(m.dev("ramdisk0"), "rb") as f:  # other drivers are untouched
            assert len(f.read(4096)) == 4096
    finally:
        unmount_tree(m)


def test_a_bug_check_ends_the_daemon_cleanly_with_the_report():
    m = mount_tree(("--tree", "test", "--verify", "Misbehave", "--verifier-action", "bugcheck"))
    try:
        assert too_much(m) == env.STATUS_SUCCESS  # answered first; then the bug check unmounts
        wait_until(lambda: not is_mounted(m.path), "the bug check unmounted the tree")
        log = open(m.log).read()
        assert "informationExceedsBuffer [0xC9/0x312]" in log and "(bug check)" in log
        assert "bug check 0xC9 (DRIVER_VERIFIER_IOMANAGER_VIOLATION)" in log
        wait_until(lambda: "unmounted" in open(m.log).read(), "the daemon finished its shutdown")
    finally:
        unmount_tree(m)


def test_a_foreground_daemon_stopped_by_a_bug_check_exits_3(tmp_path):
    log = tmp_path / "daemon.log"
    with scratch_mountpoint() as mp:
        daemon = subprocess.Popen([wdmfs_binary(), "mount", mp, "--foreground", "--tree", "test", "--verify", "Misbehave",
                                   "--verifier-action", "bugcheck"], stderr=open(log, "w"), stdout=subprocess.DEVNULL)
        try:
            wait_until(lambda: is_mounted(mp), "the daemon mounted")
            fd = os.open(os.path.join(mp, "misbehave"), os.O_RDWR)
            try:
                assert env.call(fd, TOO_MUCH, out_len=4)[0] == env.STATUS_SUCCESS
            finally:
                try:
                    os.close(fd)
                except OSError:
                    pass
            assert daemon.wait(20) == 3
            assert not is_mounted(mp)
        finally:
            if daemon.poll() is None:
                daemon.kill()


def test_verify_names_a_driver_that_is_not_loaded_and_nothing_is_mounted():
    with scratch_mountpoint() as mp:
        r = run("mount", mp, "--verify", "RamDisk,Nosuch")
        assert r.returncode != 0
        assert "--verify: no driver named Nosuch is loaded" in r.stderr, r.stderr
        assert not is_mounted(mp)


def test_a_bug_check_while_the_tree_is_built_fails_the_mount_with_its_cause():
    """The test tree's LazyFilter forgets to copy DeviceType (0x246): verified, with
    the bug check action, the mount fails and says why, as Windows stops at boot."""
    with scratch_mountpoint() as mp:
        r = run("mount", mp, "--tree", "test", "--verify", "all", "--verifier-action", "bugcheck")
        assert r.returncode == 2
        first = r.stderr.splitlines()[0]
        assert "bug check 0xC9" in first and "filterDeviceTypeNotCopied [0xC9/0x246]" in first, r.stderr
        assert "\\Driver\\LazyFilter" in first
        assert not is_mounted(mp)


def test_the_default_tree_is_clean_under_the_verifier_through_its_lifecycle():
    """Every driver of the default tree verified, through plug, I/O, disable and
    enable, restart, sleep and wake, eject, unplug, remove, rescan and unmount:
    not one violation (the rules fire on the samples' own mistakes above)."""
    m = mount_tree(("--verify", "all"))
    try:
        steps = [("plug", m.dev("toaster-bus"), "1"), ("disable", m.path, "echo"), ("enable", m.path, "echo"),
                 ("restart", m.path, "ramdisk0"), ("power", m.path, "S3"), ("power", m.path, "S0"),
                 ("eject", m.dev("toaster-bus"), "1"), ("plug", m.dev("toaster-bus"), "2"),
                 ("unplug", m.dev("toaster-bus"), "2"), ("remove", m.path, "ioctl-demo"), ("rescan", m.path)]
        for step in steps:
            r = run(*step)
            assert r.returncode == 0, (step, r.stderr)
            if step[:2] == ("plug", m.dev("toaster-bus")) and step[2] == "1":
                with open(m.dev("toaster1"), "r+") as t:
                    t.write("bread\n")
                    t.flush()
        with open(m.dev("ramdisk0"), "r+b") as d:
            d.write(b"x" * 65536)
        assert verifier(m).startswith("verify all\naction log\nviolations 0\n"), verifier(m)
        log = m.log
        assert run("unmount", m.path).returncode == 0
        assert "verifier:" not in open(log).read()  # removal of everything at unmount included
    finally:
        unmount_tree(m)


def test_the_defective_samples_are_caught_with_their_rules_and_codes():
    """The test tree's defective drivers, one per class: Misbehave (I/O, above),
    LazyFilter (device objects: filter flags), ForgetfulRemove (PnP: neither
    detaches nor deletes at REMOVE_DEVICE), CancelLeftSet (cancel: calls down
    with its cancel routine set), PowerSwallower (power: completes SET_POWER
    without passing it down) and RemoveLockKept (remove lock: never released and
    waited for at REMOVE_DEVICE). Each is caught when verified, with Windows' code."""
    m = mount_tree(("--tree", "test", "--verify", "ForgetfulRemove,CancelLeftSet,PowerSwallower,RemoveLockKept"))
    try:
        with open(m.dev("cancel-left"), "rb", buffering=0) as f:
            assert f.read(16) == bytes(16)  # the zeros still arrive
        r = run("remove", m.path, "forgetful")
        assert r.returncode == 0, r.stderr
        r = run("remove", m.path, "keeps-remove-lock")
        assert r.returncode == 0, r.stderr
        for state in ("S3", "S0"):
            with open(os.path.join(m.path, ".power"), "w") as f:
                f.write(state + "\n")
        text = verifier(m)
        expected = {
            "callDownWithCancelRoutine [0xC9/0x203]": "\\Driver\\CancelLeftSet",
            "notDetachedAtRemove [0xC9/0x21D]": "\\Driver\\ForgetfulRemove",
            "notDeletedAtRemove [0xC9/0x21E]": "\\Driver\\ForgetfulRemove",
            "successfulPowerNotForwarded [0xC9/0x231]": "\\Driver\\PowerSwallower",
            "removeLockNotReleasedAtRemove [bug check 0xC4 (DDI compliance rule RemoveLockMnRemove)]": "\\Driver\\RemoveLockKept",
        }
        for rule, driver in expected.items():
            line = next((l for l in text.splitlines() if rule in l and driver in l), None)
            assert line is not None, (rule, driver, text)
        assert "LazyFilter" not in text  # not verified: not checked
    finally:
        unmount_tree(m)


def test_forced_pending_finds_the_completion_routine_bug_a_normal_run_misses():
    """PendingForgotten's completion routine forgets IoMarkIrpPending: over zero,
    which completes at once, nothing shows; under forced pending it is 0x228."""
    m = mount_tree(("--tree", "test", "--verify", "PendingForgotten"))
    try:
        subprocess.run(["dd", f"if={m.dev('forgets-pending')}", "of=/dev/null", "bs=512", "count=20", "status=none"], check=True)
        assert "pendingNotPropagated" not in verifier(m)
        r = run("verify", m.path, "--stress", "pending=1,seed=5")
        assert r.returncode == 0 and "stress pending=1.0 low-resources=0.0 irp-log=0 deadline=0.0 seed=5\n" in r.stdout, r.stdout + r.stderr
        out = subprocess.run(["dd", f"if={m.dev('forgets-pending')}", "bs=512", "count=4", "status=none"], check=True, capture_output=True).stdout
        assert out == bytes(2048)  # the data still arrives, from another thread
        wait_until(lambda: "pendingNotPropagated [0xC9/0x228]" in verifier(m), "0x228 reported")
        line = next(l for l in verifier(m).splitlines() if "0x228" in l)
        assert "\\Driver\\PendingForgotten" in line and "the completion routine's return" in line, line
        assert run("verify", m.path, "--stress", "none").stdout.startswith("verify PendingForgotten\naction log\nviolations ")
    finally:
        unmount_tree(m)


def test_low_resources_fails_requests_with_enomem_reproducibly():
    # Zero alone is verified: the RAM disk's and echo's allocations at mount are not failed.
    m = mount_tree(("--verify", "Zero", "--stress", "low-resources=0.5,seed=11"))
    try:
        def pattern():
            try:
                fd = os.open(m.dev("zero"), os.O_RDONLY)
            except OSError as e:
                return ["open", e.errno]  # the IRP_MJ_CREATE's allocation failed
            try:
                out = []
                for _ in range(30):
                    try:
                        os.read(fd, 512)
                        out.append(0)
                    except OSError as e:
                        out.append(e.errno)
                return out
            finally:
                os.close(fd)

        def seeded():
            assert run("verify", m.path, "--stress", "low-resources=0.5,seed=11").returncode == 0
            return pattern()

        a, b = seeded(), seeded()
        assert a == b and set(a) == {0, 12}, a  # ENOMEM: STATUS_INSUFFICIENT_RESOURCES by the errno table
        assert run("verify", m.path, "--stress", "low-resources=0.5,seed=12").returncode == 0
        assert pattern() != a
        assert run("verify", m.path, "--stress", "low-resources=0").returncode == 0
        assert set(pattern()) == {0}
    finally:
        unmount_tree(m)


def test_the_irp_log_keeps_each_devices_last_irps():
    m = mount_tree(("--stress", "irp-log=4"))
    try:
        subprocess.run(["dd", f"if={m.dev('ramdisk0')}", "of=/dev/null", "bs=4096", "count=3", "skip=2", "iflag=direct", "status=none"], check=True)
        with open(os.path.join(m.path, ".devices", "ramdisk0", "irp_log")) as f:
            lines = f.read().splitlines()
        # The last four of dd's six: the open, three reads, the close's two.
        assert [l.split(" ", 1)[1] for l in lines] == [
            "IRP_MJ_READ offset=12288 length=4096 STATUS_SUCCESS information=4096",
            "IRP_MJ_READ offset=16384 length=4096 STATUS_SUCCESS information=4096",
            "IRP_MJ_CLEANUP STATUS_SUCCESS information=0",
            "IRP_MJ_CLOSE STATUS_SUCCESS information=0",
        ], lines
    finally:
        unmount_tree(m)


def test_a_user_irp_past_its_deadline_is_reported_and_can_still_be_cancelled():
    m = mount_tree(("--verify", "Echo", "--stress", "deadline=0.3"))
    try:
        cat = subprocess.Popen(["cat", m.dev("echo")], stdout=subprocess.DEVNULL)
        wait_until(lambda: "deadlineMissed" in verifier(m), "the waiting read reported")
        line = next(l for l in verifier(m).splitlines() if "deadlineMissed" in l)
        assert "IRP_MJ_READ on echo not completed within 0.3 s (it can still be cancelled)" in line, line
        cat.send_signal(signal.SIGINT)
        assert cat.wait(10) == -signal.SIGINT
        with open(m.dev("echo"), "wb", buffering=0) as f:
            f.write(b"x")
        with open(m.dev("echo"), "rb", buffering=0) as f:
            assert f.read(1) == b"x"
    finally:
        unmount_tree(m)


def test_bad_stress_options_are_refused_saying_why():
    with scratch_mountpoint() as mp:
        r = run("mount", mp, "--stress", "pending=2")
        assert r.returncode == 2 and "--stress: pending must be a decimal from 0 to 1, not `2`" in r.stderr
        assert not is_mounted(mp)
