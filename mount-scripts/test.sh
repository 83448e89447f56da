#!/usr/bin/env bash
# The whole test suite: in-process Swift tests, mounted integration tests
# (pytest) and the shell device tests (bats). Installs what is missing first.
#   bash mount-scripts/test.sh
# Ends with one line "N passed, N failed, N skipped"; exits non-zero if anything
# failed. A failed build, a stage that could not run and a missing tool each
# count as a failure; skipped tests are counted apart, never as passes.
# Between the in-process and the mounted stages, the in-process tests run again
# under AddressSanitizer and under ThreadSanitizer (one result each; a report
# fails the stage): WDMFS_SKIP_ASAN=1 or WDMFS_SKIP_TSAN=1 leaves one out.
# WDMFS_FAST=1 runs the fast part alone: no sanitizer stage, and none of the
# mounted tests marked slow (the runner's self-tests, the packaging build).
set -u
set -o pipefail
cd "$(dirname "$0")/.."
export CI=${CI:-}
if [ -n "${WDMFS_FAST:-}" ]; then
    [ -z "$CI" ] || { echo "WDMFS_FAST is not for CI: CI runs everything"; exit 2; }
    export WDMFS_SKIP_ASAN=1 WDMFS_SKIP_TSAN=1
fi

passed=0 failed=0 skipped=0
# The FUSE mounts of wdmfs test directories; those there before the run are not its
# own (a run killed earlier left them) and are named, not counted, at the end.
wdmfs_mounts() { awk '$3 ~ /^fuse/ && $2 ~ /wdmfs-/ {print $2}' /proc/mounts | sort; }
mounts_before=$(wdmfs_mounts)
log=$(mktemp)
trap 'rm -f "$log"' EXIT

finish() {
    echo "$passed passed, $failed failed, $skipped skipped"
    [ "$failed" -eq 0 ]
    exit
}

# count PATTERN: how many lines of the stage's log match (0 when none).
count() { grep -cE "$1" "$log" || true; }

# stage_result RC P F S: adds a stage's counts; a non-zero exit with no failure
# counted (a crash, a harness error) is one failure.
stage_result() {
    local rc=$1 p=$2 f=$3 s=$4
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; echo "(the stage exited with status $rc)"; fi
    passed=$((passed + p)) failed=$((failed + f)) skipped=$((skipped + s))
}

if ! bash mount-scripts/setup.sh debug; then
    echo "setup or build failed: nothing was tested"
    failed=$((failed + 1))
    finish
fi
for tool in swift python3 bats fusermount3; do
    command -v "$tool" >/dev/null || { echo "missing tool: $tool"; failed=$((failed + 1)); }
done
[ "$failed" -eq 0 ] || finish
export WDMFS_BIN="$PWD/.build/debug/wdmfs"

echo "== swift test (in-process: core, drivers, bridge mapping)"
xunit=$(mktemp -d)
swift test --xunit-output "$xunit/swift.xml" 2>&1 | tee "$log" | grep -E '^(✘|✔ Test run|➜|error:)'
rc=${PIPESTATUS[0]}
# A failure no test reported (a build error, a crash): show how the output ended.
if [ "$rc" -ne 0 ] && ! grep -q '^✘' "$log"; then tail -n 25 "$log"; fi
# Swift Testing's own report: <testsuite tests= failures= skipped= errors=> (tests excludes skips).
attr() { grep -ohE "<testsuite [^>]*" "$xunit"/swift*.xml 2>/dev/null | grep -oE " $1=\"[0-9]+\"" | grep -oE '[0-9]+' | awk '{s+=$1} END {print s+0}'; }
t=$(attr tests) f=$(( $(attr failures) + $(attr errors) )) s=$(attr skipped)
rm -rf "$xunit"
stage_result "$rc" "$((t - f))" "$f" "$s"

# sanitizer_stage NAME DIR FAILURE_PATTERN OK_MESSAGE: `swift test --sanitize=NAME` in its
# own build directory DIR, one result; on a failure the report is kept whole in
# DIR/last-run.log (the summary lines are shown here).
sanitizer_stage() {
    local name=$1 dir=$2 pattern=$3 ok=$4
    swift test --sanitize="$name" --scratch-path "$dir" >"$log" 2>&1
    local rc=$?
    if [ "$rc" -eq 0 ] && ! grep -qE "$pattern" "$log"; then
        echo "ok: $ok"
        stage_result 0 1 0 0
    else
        grep -E "$pattern|SUMMARY: |^✘" "$log" | head -n 20
        cp "$log" "$dir/last-run.log" 2>/dev/null && echo "(the whole report: $dir/last-run.log)"
        stage_result "$rc" 0 1 0
    fi
}

if [ -z "${WDMFS_SKIP_ASAN:-}" ] && [ -d Sources/WDM ]; then
    echo "== swift test --sanitize=address (slow: a build of its own; memory errors and leaks; one result)"
    ASAN_OPTIONS=detect_leaks=1 LSAN_OPTIONS="suppressions=$PWD/mount-scripts/lsan-suppressions.txt" \
        sanitizer_stage address .build-asan 'ERROR: (Address|Leak)Sanitizer' "no memory error, no leak"
fi

if [ -z "${WDMFS_SKIP_TSAN:-}" ] && [ -d Sources/WDM ]; then
    echo "== swift test --sanitize=thread (slow: a build of its own; data races; one result)"
    # The suppressions file lists the races TSan cannot see are ordered, each with the reason.
    TSAN_OPTIONS="suppressions=$PWD/mount-scripts/tsan-suppressions.txt" \
        sanitizer_stage thread .build-tsan 'WARNING: ThreadSanitizer' "no data race"
fi

if [ -d Tests/Integration ]; then
    echo "== pytest Tests/Integration (mounted, real system calls)"
    python3 -m pytest -q -rfEs -p no:cacheprovider ${WDMFS_FAST:+-m "not slow"} Tests/Integration 2>&1 | tee "$log" | tail -n 15
    rc=${PIPESTATUS[0]}
    summary=$(grep -E '^=*.*(passed|failed|skipped|error|no tests ran)' "$log" | tail -n 1)
    n() { echo "$summary" | grep -oE "[0-9]+ $1" | grep -oE '^[0-9]+' | awk '{s+=$1} END {print s+0}'; }
    stage_result "$rc" "$(n passed)" "$(( $(n failed) + $(n errors?) ))" "$(n skipped)"
fi

if [ -d mount-scripts/tests ]; then
    echo "== bats mount-scripts/tests (shell device tests)"
    bats --tap mount-scripts/tests 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    stage_result "$rc" \
        "$(grep -E '^ok ' "$log" | grep -vc '# skip' || true)" \
        "$(count '^not ok ')" \
        "$(count '^ok .*# skip')"
fi

# In CI nothing may be skipped: a test that needs FUSE (or any tool) fails when it
# is missing, so a skip there means a test hid a problem. Each skip is also a failure.
if [ -n "$CI" ] && [ "$skipped" -gt 0 ]; then
    echo "CI: $skipped tests were skipped; in CI a skip counts as a failure"
    failed=$((failed + skipped))
fi

stale=$(comm -13 <(echo "$mounts_before") <(wdmfs_mounts) | grep . || true)
if [ -n "$stale" ]; then echo "stale mounts left behind: $stale"; failed=$((failed + 1)); fi
old=$(comm -12 <(echo "$mounts_before") <(wdmfs_mounts) | grep . || true)
if [ -n "$old" ]; then echo "mounts there before this run began (not counted): $old"; fi

finish
