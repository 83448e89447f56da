#!/usr/bin/env bash
# The whole test suite: in-process Swift tests, mounted integration tests
# (pytest) and the shell device tests (bats). Installs what is missing first.
#   bash mount-scripts/test.sh
# Ends with one line "N passed, N failed"; exits non-zero if anything failed.
set -u
cd "$(dirname "$0")/.."
export CI=${CI:-}

bash mount-scripts/setup.sh debug || { echo "0 passed, 1 failed (setup or build)"; exit 1; }
export WDMFS_BIN="$PWD/.build/debug/wdmfs"
passed=0 failed=0
log=$(mktemp)
trap 'rm -f "$log"' EXIT

echo "== swift test (in-process: core and drivers)"
swift test 2>&1 | tee "$log" | grep -E '^(✘|✔ Test run|error:)' || true
rc=${PIPESTATUS[0]}
p=$(grep -E '^✔ Test .* passed' "$log" | grep -vc '^✔ Test run with' || true)
f=$(grep -E '^✘ Test .* failed' "$log" | grep -vc '^✘ Test run with' || true)
if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; fi
passed=$((passed + p)) failed=$((failed + f))

echo "== pytest Tests/Integration (mounted, real system calls)"
python3 -m pytest -q -p no:cacheprovider Tests/Integration 2>&1 | tee "$log" | tail -n 15
rc=${PIPESTATUS[0]}
summary=$(tail -n 1 "$log")
p=$(echo "$summary" | grep -oE '[0-9]+ passed' | grep -oE '[0-9]+' || echo 0)
f=$(( $(echo "$summary" | grep -oE '[0-9]+ (failed|error|errors)' | grep -oE '[0-9]+' | paste -sd+ | bc 2>/dev/null || echo 0) ))
if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; fi
passed=$((passed + p)) failed=$((failed + f))

echo "== bats mount-scripts/tests (shell device tests)"
bats --tap mount-scripts/tests 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
p=$(grep -cE '^ok ' "$log" || true)
f=$(grep -cE '^not ok ' "$log" || true)
if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; fi
passed=$((passed + p)) failed=$((failed + f))

stale=$(awk '$3 ~ /^fuse/ && $2 ~ /wdmfs-/ {print $2}' /proc/mounts)
if [ -n "$stale" ]; then echo "stale mounts left behind: $stale"; failed=$((failed + 1)); fi

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
