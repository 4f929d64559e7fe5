#!/usr/bin/env bash
# Starts a local 3-member cairn cluster on 127.0.0.1 — the members of ./Procfile (client URLs
# :2379, :22379, :32379; data in ./infra1.etcd, ./infra2.etcd, ./infra3.etcd) — and stops it
# on Ctrl-C. Builds the release binary first. Logs go to ./infraN.log.
#   ETCDCTL_API=3 etcdctl --endpoints=127.0.0.1:2379,127.0.0.1:22379,127.0.0.1:32379 member list
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
setup_build
cargo build --release --locked -p server --bin cairn
bin="${CARGO_TARGET_DIR:-target}/release/cairn"
cluster="infra1=http://127.0.0.1:12380,infra2=http://127.0.0.1:22380,infra3=http://127.0.0.1:32380"
pids=()
stop() {
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap stop EXIT INT TERM
for i in 1 2 3; do
  client_port=$([ "$i" = 1 ] && echo 2379 || echo "${i}2379")
  "$bin" --name "infra$i" --data-dir "infra$i.etcd" \
    --listen-client-urls "http://127.0.0.1:$client_port" \
    --advertise-client-urls "http://127.0.0.1:$client_port" \
    --listen-peer-urls "http://127.0.0.1:${i}2380" \
    --initial-advertise-peer-urls "http://127.0.0.1:${i}2380" \
    --initial-cluster-token etcd-cluster-1 --initial-cluster "$cluster" \
    --initial-cluster-state new "$@" 2>"infra$i.log" &
  pids+=($!)
  echo "infra$i: client http://127.0.0.1:$client_port, peer http://127.0.0.1:${i}2380, log infra$i.log"
done
echo "cluster running; Ctrl-C stops it"
wait -n "${pids[@]}"
echo "a member exited; stopping the cluster" >&2
