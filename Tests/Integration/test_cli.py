"""The command line's messages and outputs: a failure says its cause in one
line, first; help and behaviour agree; `--version`, shell completion and
`--json` for scripts; one vocabulary for a device's state."""
import json
import os
import shutil
import subprocess
import tempfile

import pytest

from conftest import ROOT, is_mounted, require_fuse, wdmfs_binary


def run_wdmfs(*args, timeout=30):
    return subprocess.run([wdmfs_binary(), *args], capture_output=True, text=True, timeout=timeout)


# --- mount -------------------------------------------------------------------

def test_a_mount_that_fails_after_the_drivers_loaded_says_why_first():
    """/dev/fuse bound to /dev/null in a mount namespace of its own: the drivers
    load, then the FUSE mount fails; its cause is the first line, and the
    drivers' `loaded` / `unloaded` lines are not what the user reads."""
    require_fuse()
    assert shutil.which("unshare"), "unshare (util-linux) is needed for this test"
    mp = tempfile.mkdtemp(prefix="wdmfs-test-")
    log = mp + ".log"
    try:
        r = subprocess.run(["unshare", "-m", "sh", "-c", 'mount --bind /dev/null /dev/fuse && exec "$0" mount "$1" --log-file "$2"',
                            wdmfs_binary(), mp, log], capture_output=True, text=True, timeout=30)
        assert r.returncode == 2, r
        lines = r.stderr.splitlines()
        assert lines[0].startswith("wdmfs: mount failed: could not mount at " + mp), r.stderr
        assert "loaded \\Driver" not in r.stderr, r.stderr
        # The daemon's log has the whole story, its cause last.
        text = open(log).read()
        assert "loaded \\Driver\\Null" in text and text.rstrip().endswith("is /dev/fuse usable?)"), text
        assert not is_mounted(mp)
    finally:
        if is_mounted(mp):
            subprocess.run(["fusermount3", "-uz", mp], capture_output=True)
        os.rmdir(mp)
        if os.path.exists(log):
            os.remove(log)


def test_mounting_on_a_file_says_it_is_not_a_directory_in_one_line():
    r = run_wdmfs("mount", "/etc/passwd")
    assert (r.returncode, r.stdout, r.stderr) == (2, "", "wdmfs: /etc/passwd is not a directory; mount on an empty directory\n")


def test_mounting_on_a_missing_directory_says_so_in_one_line_without_the_usage():
    r = run_wdmfs("mount", "/nonexistent/wdmfs")
    assert (r.returncode, r.stdout) == (2, "")
    assert r.stderr == "wdmfs: /nonexistent/wdmfs does not exist; create it first (mkdir -p /nonexistent/wdmfs)\n"


# --- help and behaviour agree ------------------------------------------------

@pytest.mark.parametrize("verb", ["remove", "restart", "rebalance", "disable", "enable"])
def test_a_verb_that_needs_names_says_so_in_its_help_and_refuses_none(verb):
    h = run_wdmfs(verb, "--help").stdout
    assert "all when none" not in h and "(one or more)" in h, h
    assert f"USAGE: wdmfs {verb} <mountpoint> <devices> ..." in h, h
    r = run_wdmfs(verb, "/nonexistent")
    assert r.returncode == 2 and "Missing expected argument '<devices> ...'" in r.stderr, r.stderr


@pytest.mark.parametrize("verb", ["status", "hwids", "stack"])
def test_a_verb_that_shows_every_node_when_none_is_named_says_so(verb):
    h = run_wdmfs(verb, "--help").stdout
    assert "(all when none)" in h and "[<devices> ...]" in h, h


def test_rescan_says_what_no_name_means():
    h = run_wdmfs("rescan", "--help").stdout
    assert "all when none" not in h and "(none: rescan from the root)" in h, h


# --- the devcon verbs --------------------------------------------------------

def test_status_shows_the_nodes_it_found_then_fails_for_an_unknown_name(tree):
    r = run_wdmfs("status", tree.path, "echo", "nosuch", "null")
    assert r.returncode == 2, r
    assert [line.split(":")[0] for line in r.stdout.splitlines()] == ["echo", "null"], r.stdout
    assert r.stderr == "wdmfs: no device node named nosuch\n"
    for verb in ("hwids", "stack"):
        r = run_wdmfs(verb, tree.path, "nosuch", "zero")
        assert r.returncode == 2 and r.stdout.startswith("zero: ") and "nosuch" in r.stderr, (verb, r)


def test_a_verb_that_changes_nodes_does_nothing_when_a_name_is_unknown(tree):
    r = run_wdmfs("disable", tree.path, "echo", "nosuch", "other")
    assert (r.returncode, r.stdout, r.stderr) == (2, "", "wdmfs: no device node named nosuch, other\n")
    assert "echo" in os.listdir(tree.path)


def test_the_tree_lists_toaster2_before_toaster10(tree):
    bus = tree.dev("toaster-bus")
    try:
        for serial in ("10", "2", "1"):
            assert run_wdmfs("plug", bus, serial).returncode == 0
        lines = run_wdmfs("tree", tree.path).stdout.splitlines()
        at = lines.index("toaster-bus")
        assert lines[at + 1:at + 4] == ["  toaster1", "  toaster2", "  toaster10"], lines
        names = [line.split(":")[0] for line in run_wdmfs("status", tree.path).stdout.splitlines()]
        assert names.index("toaster2") < names.index("toaster10"), names
    finally:
        run_wdmfs("unplug", bus, "0")


def test_plugging_into_a_device_that_is_not_a_bus_says_so(tree):
    for verb, code in (("plug", "PLUGIN"), ("unplug", "UNPLUG"), ("eject", "EJECT")):
        r = run_wdmfs(verb, tree.dev("zero"), "1")
        assert (r.returncode, r.stdout) == (1, ""), r
        assert r.stderr == f"wdmfs: zero is not a bus (it does not take IOCTL_BUSENUM_{code}_HARDWARE)\n", r.stderr


def test_plugging_a_serial_in_use_or_serial_0_says_why(tree):
    bus = tree.dev("toaster-bus")
    try:
        assert run_wdmfs("plug", bus, "5").returncode == 0
        r = run_wdmfs("plug", bus, "5")
        assert r.returncode == 1 and r.stderr.endswith(": a toaster with serial 5 is plugged in already\n"), r.stderr
        r = run_wdmfs("plug", bus, "0")
        assert r.returncode == 1 and r.stderr.endswith(": serial numbers start at 1\n"), r.stderr
        assert "STATUS_INVALID_PARAMETER" in r.stderr  # the bus's own answer stays in the message
    finally:
        run_wdmfs("unplug", bus, "0")


# --- version and completion --------------------------------------------------

def test_version_is_printed_and_defined_once():
    r = run_wdmfs("--version")
    assert r.returncode == 0 and r.stdout.startswith("wdmfs ") and r.stderr == "", r
    number = r.stdout.split()[1]
    with open(os.path.join(ROOT, "Sources", "WDMClient", "Version.swift")) as f:
        assert f'number = "{number}"' in f.read()


def test_the_bash_completion_script_is_a_script_that_completes_wdmfs(tmp_path):
    r = run_wdmfs("--generate-completion-script", "bash")
    assert r.returncode == 0 and r.stdout.startswith("#!/bin/bash"), r
    script = tmp_path / "wdmfs.bash"
    script.write_text(r.stdout)
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    out = subprocess.run(["bash", "-c", f"source {script} && complete -p wdmfs"], capture_output=True, text=True).stdout
    assert "-F _wdmfs wdmfs" in out, out
    for sub in ("mount", "status", "plug"):
        assert sub in r.stdout
    assert "--generate-completion-script bash" in open(os.path.join(ROOT, "docs", "command-line.md")).read()


# --- one vocabulary for state ------------------------------------------------

def node_file(tree, node, name):
    with open(os.path.join(tree.path, ".devices", node, name)) as f:
        return f.read()


def test_status_says_what_the_node_file_says_with_the_power_state_while_asleep(tree):
    assert node_file(tree, "zero", "status") == "started\n"
    assert run_wdmfs("status", tree.path, "zero").stdout == "zero: started\n"
    assert run_wdmfs("power", tree.path, "S3").returncode == 0
    try:
        assert node_file(tree, "zero", "power") == "D3\n"
        assert node_file(tree, "zero", "status") == "started, D3 (system S3)\n"
        assert run_wdmfs("status", tree.path, "zero").stdout == "zero: started, D3 (system S3)\n"
        assert "zero: started, D3 (system S3)" in run_wdmfs("tree", tree.path).stdout.splitlines()
    finally:
        assert run_wdmfs("power", tree.path, "S0").returncode == 0
    assert node_file(tree, "zero", "status") == "started\n"
    r = run_wdmfs("disable", tree.path, "echo")
    assert r.returncode == 0, r
    try:
        assert node_file(tree, "echo", "status") == "disabled\n"
        assert run_wdmfs("status", tree.path, "echo").stdout == "echo: disabled, problem 22 CM_PROB_DISABLED\n"
    finally:
        assert run_wdmfs("enable", tree.path, "echo").returncode == 0
    assert "running" not in run_wdmfs("status", "--help").stdout


# --- --json ------------------------------------------------------------------

STATUS_KEYS = {"name", "path", "state", "status", "problem", "problem_name", "problem_status", "power", "system_power"}


def json_of(*args):
    r = run_wdmfs(*args, "--json")
    assert r.returncode == 0, r
    return json.loads(r.stdout)


def documented(verb, keys):
    h = run_wdmfs(verb, "--help").stdout
    assert "--json" in h and all(f"  {k}  " in h for k in keys), h


def test_status_json_has_stable_documented_keys(tree):
    nodes = json_of("status", tree.path)
    assert all(set(n) == STATUS_KEYS for n in nodes), nodes
    zero = next(n for n in nodes if n["name"] == "zero")
    assert zero == {"name": "zero", "path": "zero", "state": "started", "status": "started", "problem": 0,
                    "problem_name": None, "problem_status": None, "power": "D0", "system_power": "S0"}
    documented("status", STATUS_KEYS)
    r = run_wdmfs("status", tree.path, "zero", "nosuch", "--json")
    assert r.returncode == 2 and [n["name"] for n in json.loads(r.stdout)] == ["zero"] and "nosuch" in r.stderr, r
    r = run_wdmfs("disable", tree.path, "echo")
    assert r.returncode == 0, r
    try:
        r = run_wdmfs("status", tree.path, "echo", "--json")
        echo, = json.loads(r.stdout)
        assert r.returncode == 1 and (echo["state"], echo["problem"], echo["problem_name"]) == ("disabled", 22, "CM_PROB_DISABLED"), r
    finally:
        assert run_wdmfs("enable", tree.path, "echo").returncode == 0


def test_tree_json_nests_children_in_the_text_order(tree):
    bus = tree.dev("toaster-bus")
    try:
        for serial in ("10", "2"):
            assert run_wdmfs("plug", bus, serial).returncode == 0
        roots = json_of("tree", tree.path)
        assert all(set(n) == STATUS_KEYS | {"children"} for n in roots), roots
        by_name = {n["name"]: n for n in roots}
        assert [c["name"] for c in by_name["toaster-bus"]["children"]] == ["toaster2", "toaster10"]
        assert by_name["toaster-bus"]["children"][0]["path"] == "toaster-bus/toaster2"
        text = [line.strip().split(" ")[0] for line in run_wdmfs("tree", tree.path).stdout.splitlines()]

        def flat(nodes):
            return [x for n in nodes for x in [n["name"]] + flat(n["children"])]
        assert flat(roots) == text
        documented("tree", STATUS_KEYS | {"children"})
        r = run_wdmfs("tree", "--print-default", "--json")
        assert r.returncode == 2 and "--json goes with a MOUNTPOINT" in r.stderr
    finally:
        run_wdmfs("unplug", bus, "0")


def test_hwids_and_stack_json(tree):
    ramdisk, = json_of("hwids", tree.path, "ramdisk0")
    assert set(ramdisk) == {"name", "path", "hardware_ids", "compatible_ids"}
    assert ramdisk["hardware_ids"] == [open(os.path.join(tree.path, ".devices", "ramdisk0", "hardware_ids")).read().split("\n")[0]]
    documented("hwids", {"name", "path", "hardware_ids", "compatible_ids"})
    stack, = json_of("stack", tree.path, "ramdisk0")
    assert set(stack) == {"name", "path", "stack"}
    assert [d["driver"] for d in stack["stack"]] == ["\\Driver\\PassThroughFilter", "\\Driver\\RamDisk", "\\Driver\\PnpManager"]
    assert stack["stack"][0]["device"] is None and stack["stack"][-1]["device"].startswith("\\Device\\")
    documented("stack", {"name", "path", "stack"})
