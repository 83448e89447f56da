"""A tree file's settings from the command line: `wdmfs tree --check` and the
mount refuse a setting no driver of the device takes, or a value its driver
does not take, with file:line:column; `wdmfs tree --print-default` lists what
each driver takes; a file that cannot be read says why."""
import subprocess
import tempfile
import os

import pytest

from conftest import is_mounted, require_fuse, wdmfs_binary


def run_wdmfs(*args, timeout=30):
    return subprocess.run([wdmfs_binary(), *args], capture_output=True, text=True, timeout=timeout)


def ramdisk(settings):
    return "devices:\n  - name: d\n    hardware_ids: ['Root\\RamDisk']\n    settings: {" + settings + "}\n"


BAD = [
    (ramdisk("Size: 'big'"), 4, 22, "setting `Size` of \\Driver\\RamDisk must be an integer from 512 to 17179869184 (16 GiB), not `big`"),
    (ramdisk("Size: 0"), 4, 22, "setting `Size` of \\Driver\\RamDisk must be from 512 to 17179869184 (16 GiB), not `0`"),
    (ramdisk("Size: 1000000000000"), 4, 22, "setting `Size` of \\Driver\\RamDisk must be from 512 to 17179869184 (16 GiB), not `1000000000000`"),
    (ramdisk("Buffering: sideways"), 4, 27, "setting `Buffering` of \\Driver\\RamDisk must be one of direct, buffered, neither, not `sideways`"),
    (ramdisk("Sise: 4096"), 4, 16, "unknown setting `Sise` for \\Driver\\RamDisk (did you mean `Size`?)"),
]


@pytest.mark.parametrize("text,line,column,reason", BAD)
def test_check_refuses_a_bad_setting_with_file_line_column(tmp_path, text, line, column, reason):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    r = run_wdmfs("tree", "--check", str(f))
    assert r.returncode == 2, r
    assert r.stderr == f"wdmfs: {f}:{line}:{column}: {reason}\n"
    assert r.stdout == ""


def test_check_accepts_good_settings(tmp_path):
    f = tmp_path / "good.yaml"
    f.write_text(ramdisk("Size: 17179869184, Buffering: neither") +
                 "  - name: e\n    hardware_ids: ['Root\\Echo']\n    settings: {BufferSize: 1}\n")
    r = run_wdmfs("tree", "--check", str(f))
    assert r.returncode == 0 and r.stdout == f"{f}: 2 devices: d e\n", r


def test_print_default_lists_each_drivers_settings_and_checks(tmp_path):
    r = run_wdmfs("tree", "--print-default")
    assert r.returncode == 0
    lines = r.stdout.splitlines()
    assert "#     setting Size: integer from 512 to 17179869184 (16 GiB), a multiple of 512; default 67108864 (64 MiB)" in lines
    assert "#     setting Buffering: one of direct, buffered, neither; default direct" in lines
    assert "#     setting BufferSize: integer from 1 to 16777216 (16 MiB); default 65536 (64 KiB)" in lines
    # Each setting's help follows it, as comments.
    i = lines.index("#     setting Buffering: one of direct, buffered, neither; default direct")
    assert lines[i + 1].startswith("#       how reads and writes reach the driver")
    f = tmp_path / "default.yaml"
    f.write_text(r.stdout)
    assert run_wdmfs("tree", "--check", str(f)).returncode == 0


def test_check_of_a_file_that_cannot_be_read_says_why(tmp_path):
    missing = tmp_path / "missing.yaml"
    r = run_wdmfs("tree", "--check", str(missing))
    assert r.returncode == 2 and r.stderr == f"wdmfs: {missing}: No such file or directory\n", r
    r = run_wdmfs("tree", "--check", str(tmp_path))
    assert r.returncode == 2 and r.stderr == f"wdmfs: {tmp_path}: Is a directory\n", r


def test_a_mount_with_a_bad_setting_is_refused_before_anything_is_mounted(tmp_path):
    require_fuse()
    f = tmp_path / "bad.yaml"
    f.write_text(ramdisk("Size: 1000000000000"))
    mp = tempfile.mkdtemp(prefix="wdmfs-test-")
    try:
        r = run_wdmfs("mount", mp, "--tree", str(f))
        assert r.returncode == 2
        assert f"{f}:4:22: setting `Size` of \\Driver\\RamDisk must be from 512 to 17179869184 (16 GiB)" in r.stderr, r.stderr
        assert "Fatal error" not in r.stderr and not is_mounted(mp)
    finally:
        if is_mounted(mp):
            subprocess.run(["fusermount3", "-uz", mp], capture_output=True)
        os.rmdir(mp)
