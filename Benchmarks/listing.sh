#!/usr/bin/env bash
# Listing cost against tree size: mounts trees of N root devices (null00001 ...,
# Root\Null) and times the first `ls -R .devices` (nothing cached yet), then,
# median of several runs, `ls -R .devices` again (the kernel keeps listings and
# entries), `ls -l` of the root and reading 500 status files. The goal is linear
# growth: the first `ls -R`'s time per device should stay flat as N grows.
# Usage (root, /dev/fuse):
#
#   bash Benchmarks/listing.sh [N ...]          (default 1000 2000 4000 8000 10000)
#
# Besides wall time, the daemon's own CPU time (utime + stime from /proc, in
# clock ticks) is measured around the first `ls -R`: on a loaded machine the wall
# time is mostly waiting for a CPU, the daemon's CPU time is the work it did.
#
# Environment:
#   WDMFS_BIN              the wdmfs binary (default .build/release/wdmfs, then
#                          .build/debug/wdmfs)
#   LISTING_BUILD          what to call that binary in the table (default: debug
#                          or release when it is, or is identical to, this
#                          checkout's build of that name)
#   LISTING_RUNS           runs per command, the median is reported (default 3)
#   LISTING_TIMEOUT        seconds one run of a command may take (default 120);
#                          a run that takes longer is shown as >T and the
#                          command is not repeated for that N
#   LISTING_MOUNT_TIMEOUT  seconds a mount may take, and the daemon may take to
#                          exit after `wdmfs unmount` (default 600)
#
# The table (markdown) goes to stdout, the individual runs to stderr. Exits
# non-zero if a tree file is rejected, a mount or unmount fails or a timed
# command fails (not for a timeout: that is a measurement, nor for a listing
# that is not linear).
set -eu

# WDMFS_BIN may be relative to the caller's directory: resolve it before cd.
if [ -n "${WDMFS_BIN:-}" ]; then
    wdmfs=$(realpath -- "$WDMFS_BIN")
fi
cd "$(dirname "$0")/.."
if [ -z "${wdmfs:-}" ]; then
    if [ -x .build/release/wdmfs ]; then wdmfs=$PWD/.build/release/wdmfs
    else wdmfs=$PWD/.build/debug/wdmfs; fi
fi
[ -x "$wdmfs" ] || { echo "listing.sh: wdmfs is not built ($wdmfs); set WDMFS_BIN" >&2; exit 1; }
[ -e /dev/fuse ] || { echo "listing.sh: FUSE is missing (/dev/fuse)" >&2; exit 1; }

runs=${LISTING_RUNS:-3}
cmd_timeout=${LISTING_TIMEOUT:-120}
mount_timeout=${LISTING_MOUNT_TIMEOUT:-600}
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(1000 2000 4000 8000 10000)
for n in "${sizes[@]}"; do
    [[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "listing.sh: not a device count: $n" >&2; exit 2; }
done
export LC_ALL=C   # ls sorts bytewise: the same work on every machine
clk_tck=$(getconf CLK_TCK)

# Which build: LISTING_BUILD, or by path, or a copy identical to this checkout's build.
build=${LISTING_BUILD:-}
if [ -z "$build" ]; then
    build="build unknown (set LISTING_BUILD)"
    for b in release debug; do
        if [ "$wdmfs" = "$PWD/.build/$b/wdmfs" ] || cmp -s "$wdmfs" ".build/$b/wdmfs"; then build=$b; break; fi
    done
fi

work=$(mktemp -d /tmp/wdmfs-listing.XXXXXX)
mp=""           # the mount point while a tree is mounted (the trap unmounts it)
daemon_pid=""
status=0
rows=()

is_mounted() { awk -v p="$1" '$2 == p { found = 1 } END { exit !found }' /proc/mounts; }

# daemon_of MP: the pid of the background daemon started for MP (its command
# line is `wdmfs mount MP --foreground ...`; MP is a fresh temporary directory).
daemon_of() { pgrep -f -- "^$wdmfs mount $1 --foreground" | head -n 1 || true; }

# daemon_ticks: the daemon's CPU time so far (user + system), in clock ticks.
daemon_ticks() {
    local s
    s=$(cat "/proc/$daemon_pid/stat" 2>/dev/null) || { echo 0; return; }
    s=${s##*) }   # the fields after "pid (comm) ": state is 1, utime 12, stime 13
    awk '{ print $12 + $13 }' <<<"$s"
}

# wait_daemon: until the daemon of the last mount has exited (at most
# LISTING_MOUNT_TIMEOUT seconds: unloading a big tree can take long too).
wait_daemon() {
    [ -n "$daemon_pid" ] || return 0
    local i
    for ((i = 0; i < mount_timeout * 10; i++)); do
        # Gone, or a zombie nobody has reaped yet (it has exited all the same).
        if ! kill -0 "$daemon_pid" 2>/dev/null || [ "$(awk '{print $3}' "/proc/$daemon_pid/stat" 2>/dev/null)" = Z ]; then
            daemon_pid=""
            return 0
        fi
        sleep 0.1
    done
    echo "listing.sh: daemon $daemon_pid still running $mount_timeout s after unmount" >&2
    return 1
}

cleanup() {
    if [ -n "$mp" ]; then
        # A mount that timed out leaves its daemon building the tree: stop that one.
        [ -n "$daemon_pid" ] || daemon_pid=$(daemon_of "$mp")
        if is_mounted "$mp"; then
            "$wdmfs" unmount "$mp" >/dev/null 2>&1 ||
                "$wdmfs" unmount --force "$mp" >/dev/null 2>&1 ||
                fusermount3 -uz "$mp" 2>/dev/null || true
        fi
        if [ -n "$daemon_pid" ] && kill -0 "$daemon_pid" 2>/dev/null && ! is_mounted "$mp"; then
            kill -TERM "$daemon_pid" 2>/dev/null || true
        fi
        wait_daemon || { kill -KILL "$daemon_pid" 2>/dev/null || true; }
        is_mounted "$mp" && fusermount3 -uz "$mp" 2>/dev/null
        rmdir "$mp" 2>/dev/null || true
        mp=""
    fi
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# write_tree N FILE: a tree file with N root devices null00001 ... (Root\Null).
write_tree() {
    local n=$1 file=$2 width=${#1} i
    [ "$width" -ge 5 ] || width=5
    {
        echo "# $n root devices, written by Benchmarks/listing.sh"
        echo "devices:"
        for ((i = 1; i <= n; i++)); do
            printf "  - name: 'null%0*d'\n    hardware_ids: ['Root\\\\Null']\n" "$width" "$i"
        done
    } >"$file"
}

# elapsed T0 T1: seconds between two $EPOCHREALTIME readings.
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }

# median VALUE...: the median of numbers.
median() {
    printf '%s\n' "$@" | sort -g |
        awk '{ v[NR] = $1 } END { m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; printf "%.3f", m }'
}

# median_of LABEL CMD: runs `bash -c CMD` (under the timeout) up to $runs times;
# sets med to the median wall time in seconds, or to ">T" if a run timed out
# (then it is not repeated), and cpu to the median daemon CPU time in seconds.
# The ~2 ms of starting bash is included in the wall time.
median_of() {
    local label=$1 cmd=$2 r rc t0 t1 c0 c1 walls=() cpus=() shown=()
    med="" cpu=""
    for ((r = 0; r < runs; r++)); do
        rc=0
        c0=$(daemon_ticks)
        t0=$EPOCHREALTIME
        timeout -k 5 "$cmd_timeout" bash -c "$cmd" || rc=$?
        t1=$EPOCHREALTIME
        c1=$(daemon_ticks)
        if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
            shown+=(">$cmd_timeout")
            med=">$cmd_timeout"
            break
        fi
        if [ "$rc" -ne 0 ]; then
            echo "listing.sh: N=$n: $label exited with status $rc" >&2
            status=1
        fi
        walls+=("$(elapsed "$t0" "$t1")")
        cpus+=("$(awk -v a="$c0" -v b="$c1" -v t="$clk_tck" 'BEGIN { printf "%.2f", (b - a) / t }')")
        shown+=("${walls[-1]}")
    done
    echo "  $label: ${shown[*]} s (daemon CPU ${cpus[*]:-} s)" >&2
    [ ${#cpus[@]} -eq 0 ] || cpu=$(median "${cpus[@]}")
    [ -n "$med" ] || med=$(median "${walls[@]}")
}

print_table() {
    echo
    echo "wdmfs listing cost against tree size, $(date +%F), $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)," \
        "binary $wdmfs ($build), median of $runs"
    echo
    echo "| N | mount (s) | first ls -R .devices (s) | ls -R .devices (s) | ls -l root (s) | find status, cat 500 (s) | unmount (s) | first ls -R per device (µs) | daemon CPU per device, first ls -R (µs) |"
    echo "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    local row
    for row in "${rows[@]}"; do echo "$row"; done
}

declare -A per_device=() cpu_per_device=()
for n in "${sizes[@]}"; do
    tree=$work/tree-$n.yaml
    write_tree "$n" "$tree"
    if ! "$wdmfs" tree --check "$tree" >"$work/check.log" 2>&1; then
        echo "listing.sh: wdmfs tree --check rejected the $n-device tree:" >&2
        head -c 2000 "$work/check.log" >&2
        print_table
        exit 1
    fi

    echo "N=$n" >&2
    mp=$(mktemp -d /tmp/wdmfs-listing-mp.XXXXXX)
    t0=$EPOCHREALTIME
    mrc=0
    timeout -k 5 "$mount_timeout" "$wdmfs" mount "$mp" --tree "$tree" >"$work/mount.log" 2>&1 || mrc=$?
    t1=$EPOCHREALTIME
    mount_s=$(elapsed "$t0" "$t1")
    if [ "$mrc" -ne 0 ] || ! is_mounted "$mp"; then
        if [ "$mrc" -eq 124 ] || [ "$mrc" -eq 137 ]; then
            echo "listing.sh: mounting the $n-device tree did not finish in $mount_timeout s (LISTING_MOUNT_TIMEOUT)" >&2
            rows+=("| $n | >$mount_timeout (timed out) | | | | | | | |")
        else
            echo "listing.sh: mounting the $n-device tree failed (status $mrc after $mount_s s):" >&2
            rows+=("| $n | failed | | | | | | | |")
        fi
        head -c 2000 "$work/mount.log" >&2
        print_table
        exit 1
    fi
    daemon_pid=$(grep -oE 'daemon pid [0-9]+' "$work/mount.log" | grep -oE '[0-9]+' | head -n 1 || true)
    [ -n "$daemon_pid" ] || daemon_pid=$(daemon_of "$mp")
    echo "  mount: $mount_s s" >&2

    # The first listing finds nothing cached (the kernel keeps directory listings
    # and entries afterwards): shown apart, the median is of the runs after it.
    # The per-device figures and the linearity check are of this first listing.
    c0=$(daemon_ticks)
    t0=$EPOCHREALTIME
    timeout -k 5 "$cmd_timeout" ls -R "$mp/.devices" >/dev/null || true
    t1=$EPOCHREALTIME
    c1=$(daemon_ticks)
    first=$(elapsed "$t0" "$t1")
    lsr_cpu=$(awk -v a="$c0" -v b="$c1" -v t="$clk_tck" 'BEGIN { printf "%.2f", (b - a) / t }')
    echo "  first ls -R .devices: $first s (daemon CPU $lsr_cpu s)" >&2
    median_of "ls -R .devices" "ls -R '$mp/.devices' >/dev/null"
    lsr=$med
    median_of "ls -l root" "ls -l '$mp' >/dev/null"
    lsl=$med
    # head ends the pipe early on purpose: only xargs cat's status counts.
    median_of "find status, cat 500" "find '$mp/.devices' -name status | head -n 500 | xargs cat >/dev/null"
    cat500=$med

    t0=$EPOCHREALTIME
    if ! "$wdmfs" unmount "$mp" >"$work/unmount.log" 2>&1; then
        echo "listing.sh: wdmfs unmount $mp failed:" >&2
        head -c 2000 "$work/unmount.log" >&2
        status=1
        "$wdmfs" unmount --force "$mp" >/dev/null 2>&1 || fusermount3 -uz "$mp" 2>/dev/null || true
    fi
    wait_daemon || status=1
    t1=$EPOCHREALTIME
    unmount_s=$(elapsed "$t0" "$t1")
    rmdir "$mp" 2>/dev/null || true
    mp=""
    echo "  unmount (until the daemon exited): $unmount_s s" >&2

    if [[ "$lsr" == ">"* ]]; then
        per=">$(awk -v s="${lsr#>}" -v n="$n" 'BEGIN { printf "%.0f", s / n * 1e6 }')"
        cpu_per=""
    else
        per=$(awk -v s="$first" -v n="$n" 'BEGIN { printf "%.1f", s / n * 1e6 }')
        cpu_per=$(awk -v s="$lsr_cpu" -v n="$n" 'BEGIN { printf "%.1f", s / n * 1e6 }')
    fi
    per_device[$n]=$per
    cpu_per_device[$n]=$cpu_per
    rows+=("| $n | $mount_s | $first | $lsr | $lsl | $cat500 | $unmount_s | $per | $cpu_per |")
done

print_table
smallest=$(printf '%s\n' "${sizes[@]}" | sort -n | head -n 1)
largest=$(printf '%s\n' "${sizes[@]}" | sort -n | tail -n 1)
echo
if [ "$smallest" -eq "$largest" ]; then
    echo "linear: one size only, nothing to compare"
elif [[ "${per_device[$largest]}" == ">"* || "${per_device[$smallest]}" == ">"* ]]; then
    echo "linear: NO, ls -R .devices timed out ($cmd_timeout s) at N=$largest or N=$smallest"
else
    awk -v a="${per_device[$smallest]}" -v b="${per_device[$largest]}" -v s="$smallest" -v l="$largest" \
        -v ca="${cpu_per_device[$smallest]}" -v cb="${cpu_per_device[$largest]}" 'BEGIN {
        r = b / a
        c = (ca > 0) ? sprintf("%.2fx", cb / ca) : "not measurable (under one clock tick)"
        printf "linear: %s, the first ls -R per device is %.1f µs at N=%d and %.1f µs at N=%d (%.2fx; within 2x is linear); daemon CPU per device %s\n",
            (r <= 2 ? "yes" : "NO"), b, l, a, s, r, c
    }'
fi
exit "$status"
