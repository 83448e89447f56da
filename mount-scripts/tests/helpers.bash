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

# A counter from the mount's .stats (irps_pended, verifier_violations, ...).
stat_of() { awk -v k="$1" '$1 == k {print $2}' "$MP/.stats"; }

# pended_past N: irps_pended has grown past N (it counts IRPs that ever pended).
pended_past() { [ "$(stat_of irps_pended)" -gt "$1" ]; }

# blocked_in PID CALL...: the process sleeps (state S or D) in one of the system
# calls named (read, write, ioctl), as /proc/PID/stat and /proc/PID/syscall say.
blocked_in() {
    local pid=$1 state nr call want
    shift
    state=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1) || return 1
    case $state in S|D) ;; *) return 1 ;; esac
    nr=$(cut -d' ' -f1 "/proc/$pid/syscall" 2>/dev/null) || return 1
    for call in "$@"; do
        case $(uname -m):$call in
            x86_64:read) want=0 ;; x86_64:write) want=1 ;; x86_64:ioctl) want=16 ;;
            aarch64:read) want=63 ;; aarch64:write) want=64 ;; aarch64:ioctl) want=29 ;;
            *) echo "blocked_in: no number for $call on $(uname -m)" >&2; return 1 ;;
        esac
        [ "$nr" = "$want" ] && return 0
    done
    return 1
}

# wait_until [--seconds N] CMD...: runs CMD again, with short sleeps, until it
# succeeds; fails, naming CMD, if it has not within N seconds (10: generous, the
# states waited for come within milliseconds).
wait_until() {
    local seconds=10
    if [ "$1" = --seconds ]; then seconds=$2; shift 2; fi
    local deadline=$(( $(date +%s%N) + seconds * 1000000000 ))
    until "$@"; do
        if [ "$(date +%s%N)" -gt "$deadline" ]; then
            echo "wait_until: still not so after $seconds s: $*" >&2
            return 1
        fi
        sleep 0.02
    done
}
