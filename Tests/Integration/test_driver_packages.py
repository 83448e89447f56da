"""A driver package made by `wdmfs new-driver` builds outside the repository,
against a tagged clone of it (a dependency by version), passes its own tests
(in-process, and the bats test over a real mount that it comes with), and
serves cat, dd and ioctl on a mount of a tree that names it. Signing: an
unsigned or tampered package is refused, naming it; one signed by a trusted key
loads; --test-signing loads any."""
import os
import shutil
import subprocess

import pytest

from conftest import ROOT, is_mounted, require_fuse, wdmfs_binary

pytestmark = pytest.mark.slow  # builds a scratch package: WDMFS_FAST=1 leaves it out


def run(*args, cwd=None, timeout=600):
    return subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pkg")
    upstream = tmp / "wdmfs"
    subprocess.run(["git", "clone", "-q", ROOT, str(upstream)], check=True)
    subprocess.run(["git", "-C", str(upstream), "tag", "1.0.0"], check=True)
    wdmfs = wdmfs_binary()
    r = run(wdmfs, "new-driver", "Hello", "--directory", tmp / "hello", "--wdmfs", f"file://{upstream}", "--from", "1.0.0")
    assert r.returncode == 0, r.stderr
    pkg = tmp / "hello"
    r = run("swift", "build", cwd=pkg)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return pkg


def mount(tree, *flags):
    require_fuse()
    mp = tree.parent / "mp"
    mp.mkdir(exist_ok=True)
    r = run(wdmfs_binary(), "mount", mp, "--tree", tree, *flags, timeout=60)
    return mp, r


def unmount(mp):
    if is_mounted(str(mp)):
        run(wdmfs_binary(), "unmount", mp, timeout=60)
    if is_mounted(str(mp)):
        run("fusermount3", "-uz", mp)


def test_the_generated_package_builds_and_passes_its_own_tests(package):
    r = run("swift", "test", cwd=package)
    assert r.returncode == 0 and "writesAreCountedAndReadBack() passed" in r.stdout + r.stderr, r.stdout[-3000:] + r.stderr[-3000:]
    env = dict(os.environ, WDMFS=wdmfs_binary())
    r = subprocess.run(["bats", "tests"], cwd=package, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0 and "ok 1 a write is counted and read back with cat, dd and ioctl" in r.stdout, r.stdout + r.stderr


def test_a_tree_that_names_the_package_serves_cat_dd_and_ioctl(package):
    mp, r = mount(package / "tree.yaml", "--test-signing")
    try:
        assert r.returncode == 0, r.stderr
        dev = mp / "hello"
        assert run("dd", "if=/dev/zero", f"of={dev}", "bs=4096", "count=3", "status=none").returncode == 0
        assert run("cat", dev).stdout == "hello: 12288 bytes written\n"
        r = run(wdmfs_binary(), "ioctl", dev, "0x00222000", "--out-size", "8")
        assert r.returncode == 0 and r.stdout.strip() == "0030000000000000", r.stdout + r.stderr
        assert "\\Driver\\DriverHost" in run(wdmfs_binary(), "stack", mp, "hello").stdout
    finally:
        unmount(mp)


def test_an_unsigned_or_tampered_package_is_refused_and_a_signed_one_loads(package, tmp_path):
    wdmfs = wdmfs_binary()
    # A copy of the host executable, so the other tests' package stays as built.
    host = tmp_path / "HelloHost"
    shutil.copy2(package / ".build/debug/HelloHost", host)
    tree = tmp_path / "tree.yaml"
    tree.write_text("devices:\n  - name: hello\n    hardware_ids: ['Root\\Hello']\n    driver_package: HelloHost\n    driver: Hello\n")
    mp, r = mount(tree)
    unmount(mp)
    assert r.returncode != 0 and f"driver package {host} is not signed" in r.stderr, r.stderr
    key = tmp_path / "test.key"
    assert run(wdmfs, "sign", "--new-key", key).returncode == 0
    assert oct(os.stat(key).st_mode & 0o777) == "0o600"
    assert run(wdmfs, "sign", host, "--key", key).returncode == 0
    assert run(wdmfs, "verify", "--signature", host, "--trusted-key", f"{key}.pub").returncode == 0
    # Signed by a trusted key: it loads and serves.
    mp, r = mount(tree, "--trusted-key", f"{key}.pub")
    try:
        assert r.returncode == 0, r.stderr
        assert run("cat", mp / "hello").stdout == "hello: 0 bytes written\n"
    finally:
        unmount(mp)
    # Signed, but by a key the mount does not trust.
    other = tmp_path / "other.key"
    run(wdmfs, "sign", "--new-key", other)
    mp, r = mount(tree, "--trusted-key", f"{other}.pub")
    unmount(mp)
    assert r.returncode != 0 and "not trusted" in r.stderr, r.stderr
    # Tampered after signing: refused, naming it; loaded under --test-signing.
    with open(host, "ab") as f:
        f.write(b"\0")
    r = run(wdmfs, "verify", "--signature", host, "--trusted-key", f"{key}.pub")
    assert r.returncode == 1 and "changed after it was signed" in r.stderr
    mp, r = mount(tree, "--trusted-key", f"{key}.pub")
    unmount(mp)
    assert r.returncode != 0 and f"driver package {host} was changed after it was signed (tampered)" in r.stderr, r.stderr
    mp, r = mount(tree, "--test-signing")
    try:
        assert r.returncode == 0, r.stderr
        assert run("cat", mp / "hello").stdout == "hello: 0 bytes written\n"
    finally:
        unmount(mp)
