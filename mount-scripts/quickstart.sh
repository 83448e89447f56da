#!/usr/bin/env bash
# Quick start: install what is missing, build, put `wdmfs` on the PATH, and
# mount the default device tree.
#   bash mount-scripts/quickstart.sh [MOUNTPOINT]      (default /mnt/wdm)
set -eu
cd "$(dirname "$0")/.."
mp=${1:-/mnt/wdm}

bash mount-scripts/setup.sh release
ln -sf "$PWD/.build/release/wdmfs" /usr/local/bin/wdmfs
mkdir -p "$mp"
if grep -q " $(realpath "$mp") fuse" /proc/mounts; then
    wdmfs unmount "$mp"
fi
wdmfs mount "$mp"
