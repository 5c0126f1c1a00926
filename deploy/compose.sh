#!/usr/bin/env bash
# Drives deploy/docker-compose.yml for the Makefile's compose-* targets.
#
#   deploy/compose.sh images   build the images (IMAGES=offline|docker|none)
#   deploy/compose.sh up       images, `up -d`, then wait until every server is healthy;
#                              copies the CA and the client certificate the gateway
#                              requires to $CERTS_OUT (target/compose-certs)
#   deploy/compose.sh down     stop and remove the cluster and its bundle volume
#   deploy/compose.sh test     up, the compose tests (tests/tests/compose.rs) through
#                              the published gateway, down (also when they fail);
#                              without Docker it fails unless RECSYS_SKIP_DOCKER_TESTS=1
#
# env: IMAGES (offline: deploy/offline-images.sh, the default, needs no registry;
#      docker: docker build of deploy/Dockerfile and deploy/etcd.Dockerfile;
#      none: use the images present), COMPOSE (default `docker compose` when
#      present, else docker-compose), COMPOSE_PROJECT (recsys),
#      RECSYS_GATEWAY_PORT (50051), RECSYS_UP_TIMEOUT (seconds, 600),
#      CERTS_OUT (target/compose-certs).
set -euo pipefail
cd "$(dirname "$0")/.."

# `test` without a Docker engine fails, unless RECSYS_SKIP_DOCKER_TESTS=1 says to
# skip (.ci/run sets it only when it found no engine itself): then each compose
# test is reported SKIPPED and appended to RECSYS_SKIP_LOG for CI's count.
if [ "${1:-}" = test ] && ! docker info >/dev/null 2>&1; then
  reason="no Docker engine ('docker info' failed)"
  if [ "${RECSYS_SKIP_DOCKER_TESTS:-}" != 1 ]; then
    echo "compose: $reason; set RECSYS_SKIP_DOCKER_TESTS=1 to skip the compose tests" >&2
    exit 1
  fi
  for t in $(grep -A1 '^#\[ignore = "needs the compose cluster' tests/tests/compose.rs | grep -o 'fn [a-z0-9_]*' | cut -d' ' -f2); do
    echo "SKIPPED: compose::$t: $reason"
    if [ -n "${RECSYS_SKIP_LOG:-}" ]; then printf 'compose::%s\t%s\n' "$t" "$reason" >>"$RECSYS_SKIP_LOG"; fi
  done
  exit 0
fi

if [ -z "${COMPOSE:-}" ]; then
  if docker compose version >/dev/null 2>&1; then COMPOSE="docker compose"
  elif command -v docker-compose >/dev/null 2>&1; then COMPOSE=docker-compose
  else echo "compose: neither 'docker compose' nor docker-compose is installed" >&2; exit 1
  fi
fi
project=${COMPOSE_PROJECT:-recsys}
file=$PWD/deploy/docker-compose.yml
export RECSYS_GATEWAY_PORT=${RECSYS_GATEWAY_PORT:-50051}
certs_out=${CERTS_OUT:-$PWD/target/compose-certs}
dc() { $COMPOSE -f "$file" -p "$project" "$@"; }

images() {
  case ${IMAGES:-offline} in
    offline) deploy/offline-images.sh all ;;
    docker)
      docker build -f deploy/Dockerfile -t "${RECSYS_IMAGE:-recsys:latest}" .
      docker build -f deploy/etcd.Dockerfile -t "${RECSYS_ETCD_IMAGE:-recsys-etcd:latest}" deploy ;;
    none) ;;
    *) echo "compose: IMAGES is offline, docker or none, not ${IMAGES}" >&2; exit 2 ;;
  esac
}

now() { date +%s.%N; }
seconds_since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# Polls every container of the project until each server's healthcheck says
# healthy (each runs `recsys health`, grpc.health.v1) and the bundle job has
# exited 0; fails at once when a container exits otherwise, at the deadline else.
wait_healthy() {
  local started=$1 deadline=$(( $(date +%s) + ${RECSYS_UP_TIMEOUT:-600} ))
  local states pending failed
  while true; do
    states=$(docker inspect -f '{{.Name}} {{.State.Status}} {{.State.ExitCode}} {{if .State.Health}}{{.State.Health.Status}}{{else}}-{{end}}' $(dc ps -q))
    pending=$(awk '$4 == "-" { if (!($2 == "exited" && $3 == 0)) print $1; next } $4 != "healthy" { print $1 }' <<<"$states")
    failed=$(awk '$2 == "exited" && ($3 != 0 || $4 != "-") { print $1 }' <<<"$states")
    if [ -n "$failed" ]; then
      echo "compose: exited: $failed" >&2
      dc logs --tail=40 >&2
      return 1
    fi
    if [ -z "$pending" ]; then
      echo "compose: $(grep -c ' healthy$' <<<"$states") servers healthy (SERVING) $(seconds_since "$started") s after 'up'"
      return 0
    fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
      echo "compose: not healthy after ${RECSYS_UP_TIMEOUT:-600} s:" $pending >&2
      echo "$states" >&2
      dc logs --tail=40 >&2
      return 1
    fi
    sleep 0.5
  done
}

# The CA and the client certificate, out of the secrets volume (through the
# running gateway container: the images have no shell to copy with).
client_certs() {
  rm -rf "$certs_out"
  mkdir -p "$certs_out"
  local f
  for f in ca.pem client.pem client.key; do
    docker cp "$(dc ps -q gateway):/secrets/certs/$f" "$certs_out/$f"
  done
  chmod 600 "$certs_out/client.key"
}

up() {
  images
  local started
  started=$(now)
  dc up -d
  wait_healthy "$started"
  dc logs bundle | grep -E 'bundle .* (written|already)' || true
  client_certs
  echo "compose: gateway on 127.0.0.1:$RECSYS_GATEWAY_PORT over TLS, client certificate required:"
  echo "  recsys query --gateway 127.0.0.1:$RECSYS_GATEWAY_PORT --tls-ca $certs_out/ca.pem --tls-cert $certs_out/client.pem --tls-key $certs_out/client.key ..."
}

down() {
  dc down --volumes --remove-orphans --timeout 20
}

test_cluster() {
  trap down EXIT
  up
  RECSYS_TEST_GATEWAY=127.0.0.1:$RECSYS_GATEWAY_PORT \
  RECSYS_TEST_GATEWAY_TLS=$certs_out \
  RECSYS_COMPOSE="$COMPOSE -f $file -p $project" \
    cargo test -p recsys-tests --test compose -- --ignored --test-threads=1 --nocapture
}

case ${1:-} in
  images) images ;;
  up) up ;;
  down) down ;;
  test) test_cluster ;;
  *) echo "usage: $0 images|up|down|test" >&2; exit 2 ;;
esac
