"""The test runner tells the truth: run mount-scripts/test.sh in a scratch copy
whose build is broken, and in one whose tests pass, fail and skip at every
level (Swift Testing, pytest, bats), and read its last line and exit status.
The skips are fixtures of those scratch projects, there to be counted (and, under
CI=true, to be failed); the project's own tests never skip."""
import os
import shutil
import subprocess
import textwrap

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow  # builds scratch projects: WDMFS_FAST=1 leaves it out

PACKAGE = """\
// swift-tools-version: 6.1
import PackageDescription
let package = Package(
    name: "scratch",
    targets: [
        .target(name: "Scratch"),
        .testTarget(name: "ScratchTests", dependencies: ["Scratch"]),
    ]
)
"""


def scratch(tmp_path, source):
    root = tmp_path / "project"
    (root / "mount-scripts").mkdir(parents=True)
    for script in ("setup.sh", "test.sh"):
        shutil.copy(os.path.join(ROOT, "mount-scripts", script), root / "mount-scripts" / script)
    (root / "Package.swift").write_text(PACKAGE)
    (root / "Sources/Scratch").mkdir(parents=True)
    (root / "Sources/Scratch/Scratch.swift").write_text(source)
    return root


def run(root, ci=False):
    env = {k: v for k, v in os.environ.items() if k not in ("WDMFS_BIN", "CI")}
    if ci:
        env["CI"] = "true"
    r = subprocess.run(["bash", "mount-scripts/test.sh"], cwd=root, capture_output=True, text=True, timeout=540, env=env)
    last = r.stdout.strip().splitlines()[-1]
    return r.returncode, last, r.stdout + r.stderr


def test_a_broken_build_is_a_failure_and_nothing_is_tested(tmp_path):
    root = scratch(tmp_path, "public func f() -> Int { return \"not an int\" }\n")
    (root / "Tests/ScratchTests").mkdir(parents=True)
    (root / "Tests/ScratchTests/T.swift").write_text("import Testing\n@Test func t() {}\n")
    rc, last, out = run(root)
    assert rc != 0, out
    assert last == "0 passed, 1 failed, 0 skipped", out
    assert "build failed" in out


def test_passes_failures_and_skips_are_counted_at_every_level(tmp_path):
    root = scratch(tmp_path, "public func answer() -> Int { 42 }\n")
    (root / "Tests/ScratchTests").mkdir(parents=True)
    (root / "Tests/ScratchTests/T.swift").write_text(textwrap.dedent("""\
        import Testing
        import Scratch
        @Test func passes() { #expect(answer() == 42) }
        @Test func fails() { #expect(answer() == 41) }
        @Test(.disabled("on purpose: the runner must count a skip")) func skipped() {}
        """))
    (root / "Tests/Integration").mkdir(parents=True)
    (root / "Tests/Integration/test_scratch.py").write_text(textwrap.dedent("""\
        import pytest
        def test_passes(): assert True
        def test_fails(): assert False
        @pytest.mark.skip(reason="on purpose")
        def test_skipped(): pass
        """))
    (root / "mount-scripts/tests").mkdir(parents=True)
    (root / "mount-scripts/tests/scratch.bats").write_text(textwrap.dedent("""\
        @test "passes" { true; }
        @test "fails" { false; }
        @test "skipped" { skip "on purpose"; }
        """))
    rc, last, out = run(root)
    assert rc != 0, out
    assert last == "3 passed, 3 failed, 3 skipped", out
    # Under CI=true a skip is a failure as well (a test that needs FUSE must fail, not skip).
    rc, last, out = run(root, ci=True)
    assert rc != 0, out
    assert last == "3 passed, 6 failed, 3 skipped", out
    assert "in CI a skip counts as a failure" in out


def test_a_mount_left_behind_is_a_failure_and_one_there_before_the_run_is_named_not_counted(tmp_path):
    from conftest import mount_tree, unmount_tree, wdmfs_binary
    root = scratch(tmp_path, "public func answer() -> Int { 42 }\n")
    (root / "Tests/ScratchTests").mkdir(parents=True)
    (root / "Tests/ScratchTests/T.swift").write_text(
        "import Testing\nimport Scratch\n@Test func passes() { #expect(answer() == 42) }\n")
    (root / "mount-scripts/tests").mkdir(parents=True)
    (root / "mount-scripts/tests/leaks.bats").write_text(textwrap.dedent("""\
        @test "mounts and forgets to unmount" {
            mp=$(mktemp -d /tmp/wdmfs-leak-XXXXXX)
            echo "$mp" > "$BATS_TEST_DIRNAME/../../leaked"
            "$SCRATCH_WDMFS" mount "$mp"
        }
        """))
    before = mount_tree()  # a mount that is there before the run: not the run's own
    leaked = None
    try:
        os.environ["SCRATCH_WDMFS"] = wdmfs_binary()
        try:
            rc, last, out = run(root)
        finally:
            del os.environ["SCRATCH_WDMFS"]
        leaked = (root / "leaked").read_text().strip()
        assert rc != 0, out
        assert last == "2 passed, 1 failed, 0 skipped", out
        assert f"stale mounts left behind: {leaked}" in out
        assert f"mounts there before this run began (not counted): {before.path}" in out
    finally:
        if leaked:
            subprocess.run(["fusermount3", "-uz", leaked], capture_output=True)
            os.rmdir(leaked)
        unmount_tree(before)
