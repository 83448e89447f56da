"""The benchmark's own tools work: the C yardstick serves its three files and
the load generator drives both it and wdmfs (tiny sizes: this checks, it does
not measure); the in-process benchmark is a package of its own."""
import json
import os
import shutil
import subprocess
import tempfile

import pytest

from conftest import ROOT, is_mounted, mount_tree, require_fuse, unmount_tree


@pytest.fixture(scope="module")
def tools(tmp_path_factory):
    cc = shutil.which("cc") or shutil.which("gcc")
    assert cc, "a C compiler is needed"
    out = tmp_path_factory.mktemp("bench")
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "fuse3"], capture_output=True, text=True, check=True).stdout.split()
    subprocess.run([cc, "-O2", "-Wall", "-Werror", "-o", str(out / "yardstick"),
                    os.path.join(ROOT, "Benchmarks/yardstick/yardstick.c"), *flags], check=True)
    subprocess.run([cc, "-O2", "-Wall", "-Werror", "-pthread", "-o", str(out / "loadgen"),
                    os.path.join(ROOT, "Benchmarks/tools/loadgen.c")], check=True)
    return out


def loadgen(tools, *args):
    r = subprocess.run([str(tools / "loadgen"), *map(str, args)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return float(r.stdout)


def test_the_yardstick_and_the_load_generator(tools):
    require_fuse()
    mp = tempfile.mkdtemp(prefix="wdmfs-yardstick-")
    try:
        subprocess.run([str(tools / "yardstick"), mp], check=True, timeout=30)
        with open(os.path.join(mp, "zero"), "rb") as f:
            assert f.read(1 << 20) == bytes(1 << 20)
        assert loadgen(tools, "read", f"{mp}/zero", 1 << 20, 8 << 20, 2) > 0
        assert loadgen(tools, "write", f"{mp}/sink", 1 << 20, 8 << 20, 1) > 0
        assert loadgen(tools, "ioctl", f"{mp}/echo", 100, 64, "0x00222000") > 0
    finally:
        if is_mounted(mp):
            subprocess.run(["fusermount3", "-u", mp])
        os.rmdir(mp)


def test_the_bench_tree_and_the_load_generator_against_wdmfs(tools):
    m = mount_tree(["--tree", "bench"])
    try:
        assert "zero-stacked" in os.listdir(m.path)
        assert loadgen(tools, "read", m.dev("zero-stacked"), 1 << 20, 8 << 20, 1) > 0
        assert loadgen(tools, "write", m.dev("null"), 1 << 20, 8 << 20, 1) > 0
        assert loadgen(tools, "ioctl", m.dev("ioctl-demo"), 100, 64, "0x00222000") > 0
        s = m.stats()
        assert s["bytes_copied"] == 0 and s["irps_completed"] > 100
    finally:
        unmount_tree(m)


def test_the_loadgen_reports_a_failing_device(tools, tree):
    r = subprocess.run([str(tools / "loadgen"), "read", tree.dev("ioctl-demo"), "4096", "8192", "1"],
                       capture_output=True, text=True)
    assert r.returncode != 0  # ioctl-demo has no read routine: EINVAL, and loadgen says so


def test_the_in_process_benchmark_is_a_package_of_its_own():
    """Benchmarks/Package.swift holds IRPPath and ordo-one/benchmark and depends on
    the root package by path; the root depends on neither, so a package that
    depends on wdmfs resolves only what WDM needs."""
    def manifest(path):
        out = subprocess.run(["swift", "package", "dump-package"], cwd=path, capture_output=True, text=True, check=True)
        m = json.loads(out.stdout)
        return m, [(kind, d) for dep in m["dependencies"] for kind, (d,) in dep.items()]
    root, root_deps = manifest(ROOT)
    assert "IRPPath" not in [t["name"] for t in root["targets"]]
    assert "ordo-one" not in json.dumps(root_deps)
    bench, bench_deps = manifest(os.path.join(ROOT, "Benchmarks"))
    assert [t["name"] for t in bench["targets"]] == ["IRPPath"]
    (k1, path), (k2, benchmark) = bench_deps
    assert (k1, k2) == ("fileSystem", "sourceControl")
    assert os.path.realpath(path["path"]) == os.path.realpath(ROOT)
    assert benchmark["location"]["remote"][0]["urlString"] == "https://github.com/ordo-one/benchmark"
    assert [t["name"] for t in benchmark["traits"]] == ["MallocInterposer"]
    with open(os.path.join(ROOT, "Benchmarks/bench.py")) as f:
        assert 'cwd=os.path.join(ROOT, "Benchmarks")' in f.read()
