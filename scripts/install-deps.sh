#!/usr/bin/env bash
# Installs what building and testing recsys needs and is not a Rust crate:
#   protoc (Debian's protobuf-compiler) for the gRPC code generation;
#   etcd (Debian's etcd-server) which the discovery tests start on loopback;
#   etcdctl (etcd-client), which the offline etcd image carries for its healthcheck;
#   kubectl (kubernetes-client) whose `kubectl kustomize` the manifest test renders with;
#   docker-compose where a Docker engine has no compose plugin (make compose-test);
#   moto's S3 server (PyPI moto[server]) in a venv under target/moto-venv, which
#   the object store tests (tests/tests/object_store.rs) start on loopback;
#   grpcio and grpcio-tools (PyPI) in a venv under target/example-venv, which
#   the Python example's test (tests/tests/python_example.rs) runs it with
#   (python3 with venv, Debian's python3-venv, to make both);
#   DejaVu Sans (Debian's fonts-dejavu-core), which `recsys-bench load --report`
#   labels its PNG plots with (and its test renders one).
# Uses apt-get (with sudo when not root); elsewhere it says exactly what to install.
set -euo pipefail

need=()
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
command -v etcd >/dev/null 2>&1 || [ -x /usr/bin/etcd ] || need+=(etcd-server)
command -v etcdctl >/dev/null 2>&1 || [ -x /usr/bin/etcdctl ] || need+=(etcd-client)
command -v kubectl >/dev/null 2>&1 || need+=(kubernetes-client)
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || need+=(fonts-dejavu-core)
if command -v docker >/dev/null 2>&1 && ! docker compose version >/dev/null 2>&1 \
  && ! command -v docker-compose >/dev/null 2>&1; then
  need+=(docker-compose)
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "recsys needs a Rust toolchain (cargo, rustc >= 1.88): install it with rustup (https://rustup.rs)" >&2
  exit 1
fi

cd "$(dirname "$0")/.."
moto_venv=target/moto-venv
example_venv=target/example-venv
example_ready() { "$example_venv/bin/python" -c 'import grpc, grpc_tools' >/dev/null 2>&1; }
if [ ! -x "$moto_venv/bin/moto_server" ] || ! example_ready; then
  command -v python3 >/dev/null 2>&1 || need+=(python3)
  python3 -m venv --help >/dev/null 2>&1 && python3 -c 'import ensurepip' 2>/dev/null || need+=(python3-venv)
fi

install_moto() {
  [ -x "$moto_venv/bin/moto_server" ] && return 0
  echo "installing moto[server] into $moto_venv (the object store tests' S3 server)" >&2
  rm -rf "$moto_venv"
  python3 -m venv "$moto_venv"
  "$moto_venv/bin/pip" install -q --disable-pip-version-check 'moto[server]>=5,<6'
  "$moto_venv/bin/moto_server" --help >/dev/null
}

install_example() {
  example_ready && return 0
  echo "installing grpcio and grpcio-tools into $example_venv (the Python example's test)" >&2
  rm -rf "$example_venv"
  python3 -m venv "$example_venv"
  "$example_venv/bin/pip" install -q --disable-pip-version-check 'grpcio>=1.60' 'grpcio-tools>=1.60'
  example_ready
}

if [ ${#need[@]} -eq 0 ]; then
  install_moto
  install_example
  exit 0
fi

echo "installing: ${need[*]}" >&2
if command -v apt-get >/dev/null 2>&1; then
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then sudo="sudo"; else
      echo "not root and no sudo: run 'apt-get install -y ${need[*]}' as root" >&2; exit 1
    fi
  fi
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  install_moto
  install_example
else
  echo "no apt-get here: install ${need[*]} with your package manager" >&2
  echo "(protoc: 'brew install protobuf' on macOS, 'dnf install protobuf-compiler' on Fedora;" >&2
  echo " etcd: 'brew install etcd', or a release binary on PATH; any etcd >= 3.4 works;" >&2
  echo " kubectl: any kubectl >= 1.20, for 'kubectl kustomize';" >&2
  echo " python3 with venv, for moto's S3 server in target/moto-venv and the Python example's grpcio in target/example-venv)" >&2
  exit 1
fi
