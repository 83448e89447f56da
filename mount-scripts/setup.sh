#!/usr/bin/env bash
# Installs what wdmfs needs on a Debian machine with the Swift toolchain, then builds.
# Run as root:  bash mount-scripts/setup.sh [debug|release]
# Exits non-zero (and says why) when a package cannot be installed or the build fails.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
for pkg in libfuse3-dev fuse3 pkg-config bats bats-assert bats-support fio e2fsprogs nbdkit libnbd-bin graphviz mscgen; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
    echo "setup: installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || true
    apt-get install -y -qq "${need[@]}" >/dev/null
fi
for mod in pytest prysk; do
    if ! python3 -c "import $mod" 2>/dev/null; then
        echo "setup: installing $mod"
        python3 -m pip install -q "$mod"
    fi
done
[ -e /dev/fuse ] || { echo "setup: /dev/fuse is missing: FUSE cannot work on this machine" >&2; exit 1; }

config=${1:-debug}
echo "setup: swift build -c $config"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! swift build -c "$config" >"$log" 2>&1; then
    grep -E 'error:' "$log" | head -n 20 >&2 || tail -n 20 "$log" >&2
    echo "setup: the build failed" >&2
    exit 1
fi
tail -n 1 "$log"
