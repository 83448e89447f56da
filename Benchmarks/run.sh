#!/usr/bin/env bash
# The benchmark suite: wdmfs against the C libfuse yardstick, same run, A B A B.
#   bash Benchmarks/run.sh [--rounds N] [--quick]
# Then the in-process IRPPath benchmark, from the Benchmarks package (Benchmarks/Package.swift).
set -eu
cd "$(dirname "$0")/.."
bash mount-scripts/setup.sh release >/dev/null
mkdir -p .build/bench
cc -O2 -Wall -o .build/bench/yardstick Benchmarks/yardstick/yardstick.c $(pkg-config --cflags --libs fuse3)
cc -O2 -Wall -pthread -o .build/bench/loadgen Benchmarks/tools/loadgen.c
exec python3 Benchmarks/bench.py "$@"
