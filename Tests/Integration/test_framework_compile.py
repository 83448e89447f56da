"""A framework Request has one owner: completing it twice, or completing it after
a forward or after marking it cancellable, does not compile. Each snippet is
compiled (to SIL, where Swift checks ownership) against the WDF module of the
debug build; the version that completes once compiles cleanly, so a missing
module or a broken command fails the test instead of passing it. (In pytest, not
Swift Testing: Foundation's Process leaks under LeakSanitizer.)"""
import os
import subprocess

import pytest

from conftest import ROOT

MODULES = os.path.join(ROOT, ".build", "debug", "Modules")


def compile_snippet(tmp_path, body):
    f = tmp_path / "snippet.swift"
    f.write_text("import WDF\nfunc handler(_ request: consuming Request) {\n    " + body + "\n}\n")
    r = subprocess.run(["swiftc", "-emit-sil", "-o", "/dev/null", "-I", MODULES, str(f)], capture_output=True, text=True, timeout=120)
    return r.returncode, [l for l in r.stderr.splitlines() if "error:" in l]


def test_completing_a_request_once_compiles(tmp_path):
    assert os.path.exists(os.path.join(MODULES, "WDF.swiftmodule")), MODULES
    status, errors = compile_snippet(tmp_path, "let n = request.length\n    request.complete(.success, information: n)")
    assert status == 0 and errors == [], errors


@pytest.mark.parametrize("body", [
    "request.complete(.success)\n    request.complete(.success)",
    "request.forwardToLower()\n    request.complete(.success)",
    "_ = request.markCancellable { $0.complete(.cancelled) }\n    request.complete(.success)",
])
def test_completing_a_request_twice_does_not_compile(tmp_path, body):
    status, errors = compile_snippet(tmp_path, body)
    assert status != 0
    assert any("'request' consumed more than once" in e for e in errors), errors


def compile_source(tmp_path, source):
    f = tmp_path / "snippet.swift"
    f.write_text("import WDF\n" + source + "\n")
    r = subprocess.run(["swiftc", "-emit-sil", "-o", "/dev/null", "-I", MODULES, str(f)], capture_output=True, text=True, timeout=120)
    return r.returncode, [l for l in r.stderr.splitlines() if "error:" in l]


# A request lives only as long as the call it was handed to (it is ~Escapable):
# a queue may present it inline, in the dispatch routine, and the framework must
# see every way it is kept. Storing it, or finishing it from an escaping closure,
# does not compile.
@pytest.mark.parametrize("source,expected", [
    ("final class Box { var request: Request? = nil }\n"
     "func handler(_ request: consuming Request) { Box().request = request }",
     "cannot return a ~Escapable result"),
    ("import Dispatch\n"
     "func handler(_ request: consuming Request) { DispatchQueue.global().async { request.complete(.success) } }",
     "escapes its scope"),
])
def test_a_request_kept_behind_the_frameworks_back_does_not_compile(tmp_path, source, expected):
    status, errors = compile_source(tmp_path, source)
    assert status != 0
    assert any(expected in e for e in errors), errors


def test_a_request_kept_the_frameworks_ways_compiles(tmp_path):
    # Marked cancellable (the handle is a class the driver may store), or forwarded to another queue.
    status, errors = compile_source(tmp_path, "final class Holder: @unchecked Sendable { var held: CancellableRequest? = nil }\n"
                                    "func handler(_ request: consuming Request, _ holder: Holder, _ queue: Queue) {\n"
                                    "    if request.length > 0 { holder.held = request.markCancellable { $0.complete(.cancelled) } }\n"
                                    "    else { request.forward(to: queue) }\n}")
    assert status == 0 and errors == [], errors
