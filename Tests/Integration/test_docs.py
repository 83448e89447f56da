"""The documentation is tested: every shell session shown in README.md and docs/*.md
(a fenced block marked `console`) is run, and its output compared, by prysk (a cram
runner). A page's blocks run in order in one bash, against /mnt/wdm, which is
rewritten to a fresh temporary directory; the page mounts and unmounts its tree
itself, and whatever it leaves mounted is unmounted afterwards.

In a block, `$ ` starts a command, `> ` continues one, other lines are the output
expected; prysk's annotations work at the end of an output line: `(glob)` (`*` and
`?`), `(re)`, and `[N]` on its own line for a command's non-zero exit status. A
fenced block with `$ ` prompts that is not marked `console` fails the test: nothing
that looks like a session goes untested."""
import glob
import os
import re
import shutil
import subprocess
import tempfile

import pytest

from conftest import ROOT, is_mounted, require_fuse, wdmfs_binary

PAGES = [os.path.join(ROOT, "README.md")] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))
FENCE = re.compile(r"^```(\S*)\s*$")


def blocks(path):
    """(info string, first line number, lines) of each fenced block of a page."""
    out, info, start, lines = [], None, 0, []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\n")
            m = FENCE.match(line)
            if m and info is None:
                info, start, lines = m.group(1), n + 1, []
            elif line.startswith("```") and info is not None:
                out.append((info, start, lines))
                info = None
            elif info is not None:
                lines.append(line)
    return out


def transcript(path, mountpoint):
    """The page's console blocks as a prysk test (two-space indented), /mnt/wdm rewritten."""
    t = []
    for info, start, lines in blocks(path):
        if info != "console":
            continue
        t.append(f"{os.path.relpath(path, ROOT)}, line {start}:")
        for line in lines:
            t.append(("  " + line.replace("/mnt/wdm", mountpoint)).rstrip() if line else "  ")
    return "\n".join(t) + "\n"


def test_every_session_shown_is_a_tested_console_block():
    untested = []
    for page in PAGES:
        for info, start, lines in blocks(page):
            if info != "console" and any(line.startswith("$ ") for line in lines):
                untested.append(f"{os.path.relpath(page, ROOT)}:{start}")
    assert not untested, "sessions not marked ```console (so not tested): " + ", ".join(untested)


@pytest.mark.parametrize("page", [p for p in PAGES if any(i == "console" for i, _, _ in blocks(p))],
                         ids=lambda p: os.path.relpath(p, ROOT))
def test_the_sessions_on_the_page_run_as_shown(page, tmp_path):
    require_fuse()
    if shutil.which("prysk") is None and subprocess.run(["python3", "-m", "prysk", "--version"], capture_output=True).returncode:
        pytest.fail("prysk is missing (python3 -m pip install prysk; mount-scripts/setup.sh installs it)")
    mountpoint = tempfile.mkdtemp(prefix="wdmfs-doc-")
    test = tmp_path / (os.path.basename(page).replace(".md", "") + ".t")
    test.write_text(transcript(page, mountpoint))
    bindir = tmp_path / "bin"
    bindir.mkdir()
    os.symlink(wdmfs_binary(), bindir / "wdmfs")
    env = dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}")
    try:
        r = subprocess.run(["python3", "-m", "prysk", "--shell=/bin/bash", "--indent=2", str(test)],
                           capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
        assert r.returncode == 0, f"{os.path.relpath(page, ROOT)} does not match the program:\n{r.stdout}{r.stderr}"
    finally:
        if is_mounted(mountpoint):
            subprocess.run([wdmfs_binary(), "unmount", "--force", mountpoint], capture_output=True, timeout=30)
        if is_mounted(mountpoint):
            subprocess.run(["fusermount3", "-uz", mountpoint], capture_output=True)
        os.rmdir(mountpoint)
