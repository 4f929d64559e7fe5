#!/usr/bin/env bash
# Runs every test: unit, property, integration with real etcdctl 3.5/3.4 and the etcd-client
# crate, differential tests against real etcd 3.5.1, and crash tests. Installs what it needs.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/setup.sh
setup_test
# Tests start real servers; two test threads fit this project's 2-core machines. (An
# environment variable, not --test-threads: the criterion benches, smoke-run here once each,
# do not take libtest's flags.)
export RUST_TEST_THREADS="${CAIRN_TEST_THREADS:-2}"
exec cargo test --workspace --all-targets --locked "$@"
