#!/usr/bin/env bash
# Builds cairn (release) and runs a single-node server: etcd's defaults, client URL
# http://127.0.0.1:2379, data in ./default.etcd. Extra arguments are passed to cairn (etcd's
# flags, e.g. --data-dir, --listen-client-urls).
set -euo pipefail
cd "$(dirname "$0")"
source scripts/setup.sh
setup_build
exec cargo run --release --locked -p server --bin cairn -- "$@"
