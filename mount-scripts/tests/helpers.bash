# Shared by the shell device tests: mount the default tree under a fresh
# temporary directory once per file, unmount it whatever happens.
load '/usr/lib/bats/bats-support/load'
load '/usr/lib/bats/bats-assert/load'

# This checkout's build first (so a stale wdmfs on the PATH is not what gets tested).
local_build="$BATS_TEST_DIRNAME/../../.build/debug/wdmfs"
if [ -n "${WDMFS_BIN:-}" ]; then WDMFS=$WDMFS_BIN
elif [ -x "$local_build" ]; then WDMFS=$local_build
else WDMFS=$(command -v wdmfs || echo "$local_build"); fi

mount_tree() {
    [ -e /dev/fuse ] || { echo "FUSE is missing (/dev/fuse)" >&2; return 1; }
    [ -x "$WDMFS" ] || { echo "wdmfs is not built ($WDMFS)" >&2; return 1; }
    MP=$(mktemp -d /tmp/wdmfs-bats.XXXXXX)
    export MP WDMFS
    "$WDMFS" mount "$MP" "$@" >/dev/null
}

unmount_tree() {
    [ -n "${MP:-}" ] || return 0
    "$WDMFS" unmount "$MP" 2>/dev/null || fusermount3 -uz "$MP" 2>/dev/null || true
    rmdir "$MP" 2>/dev/null || true
}
