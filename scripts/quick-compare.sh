#!/usr/bin/env bash
# A first side-by-side figure: real etcd 3.5.1 and cairn (release build), both fsyncing, data
# on the same filesystem, on 127.0.0.1; the same quick load runs against each in turn,
# alternating A B A B for ROUNDS rounds, and the medians and their ratio are printed.
# MEMBERS=3 runs each as a 3-member cluster on 127.0.0.1 instead, the load spread over the
# members' client URLs.
# (The full harness with CPU-per-op and charts is the bench crate's job.)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
setup_test
ROUNDS="${ROUNDS:-3}"
MEMBERS="${MEMBERS:-1}"
# The same build as ./run.sh's, then the load generator (which does not link RocksDB).
cargo build --release --locked -p server --bin cairn
cargo build --release --locked -p etcd-proto --example quickload
target="${CARGO_TARGET_DIR:-target}/release"
work="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

start() { # kind base-port: members on base, base+10, ... (client), +1 (peer)
  local kind=$1 base=$2 bin cluster="" i port
  if [ "$kind" = etcd ]; then bin="$CAIRN_ETCD_BIN_DIR/etcd"; else bin="$target/cairn"; fi
  for i in $(seq "$MEMBERS"); do
    cluster+="${cluster:+,}m$i=http://127.0.0.1:$((base + 10 * i + 1))"
  done
  : >"$work/$kind.pids"
  endpoints=""
  for i in $(seq "$MEMBERS"); do
    port=$((base + 10 * i))
    rm -rf "$work/$kind$i"
    "$bin" --name "m$i" --data-dir "$work/$kind$i" --listen-client-urls "http://127.0.0.1:$port" \
      --advertise-client-urls "http://127.0.0.1:$port" --listen-peer-urls "http://127.0.0.1:$((port+1))" \
      --initial-advertise-peer-urls "http://127.0.0.1:$((port+1))" \
      --initial-cluster "$cluster" --initial-cluster-token quick >"$work/$kind$i.log" 2>&1 &
    echo $! >>"$work/$kind.pids"
    endpoints+="${endpoints:+,}127.0.0.1:$port"
  done
  for i in $(seq "$MEMBERS"); do
    port=$((base + 10 * i))
    for _ in $(seq 100); do curl -sf "127.0.0.1:$port/health" >/dev/null && continue 2; sleep 0.1; done
    echo "$kind member $i did not start" >&2; exit 1
  done
}
stop() { kill $(cat "$work/$1.pids"); for p in $(cat "$work/$1.pids"); do wait "$p" 2>/dev/null || true; done; }

run() { # kind op clients conns total
  local base; [ "$1" = etcd ] && base=22300 || base=23300
  start "$1" $base
  "$target/examples/quickload" "$endpoints" "$2" "$3" "$4" "$5" | sed -n 's/.*ops_per_sec=\([0-9]*\) p50_ms=\([0-9.]*\) p99_ms=\([0-9.]*\)/\1 \2 \3/p'
  stop "$1"
}

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

SPECS="${SPECS:-put 1 1 2000;put 64 8 20000;range 64 8 100000}"
IFS=';' read -r -a specs <<<"$SPECS"
echo "members per server: $MEMBERS, rounds: $ROUNDS"
for spec in "${specs[@]}"; do
  read -r op clients conns total <<<"$spec"
  : >"$work/etcd.res"; : >"$work/cairn.res"
  for _ in $(seq "$ROUNDS"); do
    run etcd "$op" "$clients" "$conns" "$total" >>"$work/etcd.res"
    run cairn "$op" "$clients" "$conns" "$total" >>"$work/cairn.res"
  done
  e_ops=$(cut -d' ' -f1 "$work/etcd.res" | median); c_ops=$(cut -d' ' -f1 "$work/cairn.res" | median)
  e_p99=$(cut -d' ' -f3 "$work/etcd.res" | median); c_p99=$(cut -d' ' -f3 "$work/cairn.res" | median)
  e_p50=$(cut -d' ' -f2 "$work/etcd.res" | median); c_p50=$(cut -d' ' -f2 "$work/cairn.res" | median)
  printf '%-6s clients=%-3s  etcd %7s ops/s p50 %6s ms p99 %6s ms | cairn %7s ops/s p50 %6s ms p99 %6s ms | ops ratio cairn/etcd %s\n' \
    "$op" "$clients" "$e_ops" "$e_p50" "$e_p99" "$c_ops" "$c_p50" "$c_p99" "$(awk "BEGIN{printf \"%.2f\", $c_ops/$e_ops}")"
done
