"""The IRP trace on a real mount: `MOUNTPOINT/.trace` and `wdmfs trace`. The trace
of a dd shows each IRP going down and coming back up through every stack
location; several readers each get the whole stream; a reader that does not
read loses events, counted and said; filters by device and major function; a
signal ends a blocked read; the pictures (a sequence chart through mscgen, the
tree through Graphviz) are drawn and hold the stack locations."""
import os
import re
import signal
import subprocess
import tempfile
import threading

import pytest

from conftest import blocked_in, mount_tree, unmount_tree, wait_until, wdmfs_binary


@pytest.fixture(scope="module")
def traced():
    work = tempfile.mkdtemp(prefix="wdmfs-trace-")
    tree = os.path.join(work, "tree.yaml")
    with open(tree, "w") as f:
        f.write("""devices:
  - name: disk
    hardware_ids: ['Root\\RamDisk']
    upper_filters: [CorruptFilter, ErrorFilter]
    settings: {Size: 1048576, CorruptRate: 0, ErrorRate: 0}
  - name: sink
    hardware_ids: ['Root\\Null']
""")
    m = mount_tree(("--tree", tree))
    m.work = work
    try:
        yield m
    finally:
        unmount_tree(m)
        subprocess.run(["rm", "-rf", work])


def dd_read(m, name="disk", count=1, bs=4096):
    subprocess.run(["dd", f"if={m.dev(name)}", "of=/dev/null", f"bs={bs}", f"count={count}", "iflag=direct", "status=none"], check=True)


def trace(m, *args):
    """Starts `wdmfs trace`; returns it once it waits in its read of the trace."""
    p = subprocess.Popen([wdmfs_binary(), "trace", m.path, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until(lambda: blocked_in(p.pid, "read") or p.poll() is not None, "wdmfs trace waiting for events")
    assert p.poll() is None, p.stderr.read()
    return p


def shape(line):
    """A raw line without its time and IRP number."""
    return " ".join(line.split()[2:])


READ_THROUGH_THE_STACK = [
    "call IRP_MJ_READ 4/4 \\Driver\\ErrorFilter disk offset=0 length=4096",
    "call IRP_MJ_READ 4/4 \\Driver\\CorruptFilter disk",
    "call IRP_MJ_READ 3/4 \\Driver\\RamDisk disk",
    "complete IRP_MJ_READ 3/4 \\Driver\\RamDisk disk STATUS_SUCCESS information=4096",
    "routine IRP_MJ_READ 4/4 \\Driver\\CorruptFilter disk STATUS_SUCCESS",
    "done IRP_MJ_READ disk STATUS_SUCCESS information=4096 time=*",
    "return IRP_MJ_READ 3/4 \\Driver\\RamDisk disk STATUS_SUCCESS",
    "return IRP_MJ_READ 4/4 \\Driver\\CorruptFilter disk STATUS_SUCCESS",
    "return IRP_MJ_READ 4/4 \\Driver\\ErrorFilter disk STATUS_SUCCESS",
]


def irps(lines):
    out = {}
    for l in lines:
        out.setdefault(l.split()[1], []).append(l)
    return out


def test_the_trace_of_a_dd_shows_each_irp_down_and_up_through_every_location(traced):
    p = trace(traced, "--device", "disk", "--raw", "--irps", "4")
    dd_read(traced)
    out, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    by_irp = irps(out.splitlines())
    majors = [ls[0].split()[3] for ls in by_irp.values()]
    assert majors == ["IRP_MJ_CREATE", "IRP_MJ_READ", "IRP_MJ_CLEANUP", "IRP_MJ_CLOSE"]
    read = [re.sub(r"time=\S+", "time=*", shape(l)) for l in list(by_irp.values())[1]]
    assert read == READ_THROUGH_THE_STACK
    # The pretty view nests the calls as they nest.
    p = trace(traced, "--device", "disk", "--major", "read", "--irps", "1")
    dd_read(traced)
    out, _ = p.communicate(timeout=30)
    lines = [l.split(" ", 2)[2] for l in out.splitlines()]
    assert lines[:3] == ["IRP_MJ_READ -> 4/4 \\Driver\\ErrorFilter (disk) offset=0 length=4096",
                         "IRP_MJ_READ   -> 4/4 \\Driver\\CorruptFilter (disk)",
                         "IRP_MJ_READ     -> 3/4 \\Driver\\RamDisk (disk)"]
    assert lines[-1] == "IRP_MJ_READ <- 4/4 \\Driver\\ErrorFilter returned STATUS_SUCCESS"


def read_until(fd, needle, into):
    data = b""
    while needle not in data:
        chunk = os.read(fd, 65536)
        assert chunk, "the trace ended"
        data += chunk
    into.append(data)


def test_several_readers_each_get_the_whole_stream(traced):
    fds = [os.open(traced.dev(".trace"), os.O_RDONLY) for _ in range(3)]
    try:
        results = []
        # The last event of the dd: the close's return from the top of the stack.
        threads = [threading.Thread(target=read_until, args=(fd, b"return IRP_MJ_CLOSE 4/4 \\Driver\\ErrorFilter", results)) for fd in fds]
        for t in threads:
            t.start()
        wait_until(lambda: sum(blocked_in(tid, "read") for tid in [t.native_id for t in threads]) == 3, "three readers waiting")
        dd_read(traced, count=3)
        for t in threads:
            t.join(30)
        assert len(results) == 3
        assert results[0] == results[1] == results[2]
        assert results[0].count(b" done IRP_MJ_READ disk ") == 3
        with open(traced.dev(".stats")) as f:
            assert "trace_readers 3\n" in f.read()
    finally:
        for fd in fds:
            os.close(fd)
    wait_until(lambda: "trace_readers 0\n" in open(traced.dev(".stats")).read(), "the readers gone")


def test_a_reader_that_does_not_read_loses_events_counted_and_said(traced):
    fd = os.open(traced.dev(".trace"), os.O_RDONLY)
    try:
        before = int(dict(l.split() for l in open(traced.dev(".stats")))["trace_events_lost"])
        dd_read(traced, count=2048, bs=512)  # the whole disk: about 18000 events, more than the 1 MiB a reader holds
        got = []
        # The reader takes what its buffer held (at most 1 MiB, whole lines), then the
        # next events: the first that fits says what was lost.
        held = [0]

        def reader():
            data = b""
            while b"return IRP_MJ_CLOSE 2/2 \\Driver\\Null" not in data:
                chunk = os.read(fd, 65536)
                assert chunk
                data += chunk
                held[0] = len(data)
            got.append(data)

        t = threading.Thread(target=reader)
        t.start()
        wait_until(lambda: held[0] > (1 << 20) - 512, "the reader through what its buffer held")
        dd_read(traced, name="sink")
        t.join(30)
        text = b"".join(got).decode()
        assert " lost " in text
        said = sum(int(l.split()[2]) for l in text.splitlines() if l.split()[1] == "lost")
        lost = int(dict(l.split() for l in open(traced.dev(".stats")))["trace_events_lost"]) - before
        assert said == lost > 1000
    finally:
        os.close(fd)


def test_a_filter_by_device_and_major_function(traced):
    p = trace(traced, "--device", "disk", "--major", "write", "--raw", "--irps", "1")
    dd_read(traced)
    dd_read(traced, name="sink")
    subprocess.run(["dd", "if=/dev/zero", f"of={traced.dev('disk')}", "bs=512", "count=1", "conv=notrunc", "status=none"], check=True)
    out, _ = p.communicate(timeout=30)
    assert out and all(" IRP_MJ_WRITE " in l and " disk" in l for l in out.splitlines())
    r = subprocess.run([wdmfs_binary(), "trace", traced.path, "--major", "sideways"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "the trace refused the filter major sideways" in r.stderr


def test_a_signal_ends_a_read_waiting_for_events(traced):
    cat = subprocess.Popen(["cat", traced.dev(".trace")], stdout=subprocess.DEVNULL)
    wait_until(lambda: blocked_in(cat.pid, "read"), "cat waiting in its read of .trace")
    cat.send_signal(signal.SIGINT)
    assert cat.wait(10) == -signal.SIGINT
    assert os.path.exists(traced.dev(".stats"))
    wait_until(lambda: "trace_readers 0\n" in open(traced.dev(".stats")).read(), "the reader gone")


def test_the_pictures_are_drawn_and_hold_the_stack_locations(traced):
    capture = os.path.join(traced.work, "dd.trace")
    p = trace(traced, "--device", "disk", "--irps", "4", "--save", capture)
    dd_read(traced)
    p.communicate(timeout=30)
    read_irp = next(l.split()[1][1:] for l in open(capture) if " call IRP_MJ_READ " in l)
    for ext in ("svg", "png"):
        out = os.path.join(traced.work, f"read.{ext}")
        r = subprocess.run([wdmfs_binary(), "trace", "--chart", capture, "--irp", read_irp, "--output", out],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and r.stdout == f"{out}: IRP #{read_irp}\n", r.stderr
        data = open(out, "rb").read()
        if ext == "png":
            assert data.startswith(b"\x89PNG")
        else:
            svg = data.decode()
            assert "<svg" in svg
            # Each location, the calls down, the completion, the routine, the returns (mscgen wraps long labels).
            for text in ("ErrorFilter", "CorruptFilter", "RamDisk", "4/4 disk", "3/4 disk", "IoCallDriver",
                         "IoCompleteRequest", "completion routine", "returns STATUS_SUCCESS"):
                assert text in svg, text
    tree_svg = os.path.join(traced.work, "tree.svg")
    r = subprocess.run([wdmfs_binary(), "tree", traced.path, "--dot", "--output", tree_svg], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    svg = open(tree_svg).read()
    for text in ("disk", "4/4 \\Driver\\ErrorFilter", "3/4 \\Driver\\CorruptFilter", "2/4 \\Driver\\RamDisk", "sink"):
        assert text in svg, text
    r = subprocess.run([wdmfs_binary(), "trace", "--chart", capture, "--irp", "999", "--output", "x.svg"], capture_output=True, text=True)
    assert r.returncode == 2 and "has no IRP #999" in r.stderr
