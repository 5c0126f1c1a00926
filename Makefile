# The two commands of the README: `make demo` and `make test`.
CARGO ?= cargo
# Extra flags for `recsys demo`, e.g. make demo ARGS="--items 500000 --shards 4".
ARGS ?=
# MovieLens 100K (../shared/data/fetch.sh DIR fills DIR/ml-100k): make demo DATA=DIR
# trains on it and serves the trained model instead of the synthetic bundle.
DATA ?=

.PHONY: deps demo test lint fmt bench bench-merge clean-demo images images-offline compose-up compose-down compose-test k8s-render k8s-secrets

deps:
	@scripts/install-deps.sh

## Build a synthetic bundle, start a local cluster on loopback, print samples, serve until Ctrl-C.
demo: deps
	$(CARGO) run -q -p recsys-cli -- demo $(if $(DATA),--data $(DATA)) $(ARGS)

## Everything CI checks: the vendored usearch is upstream plus its patch series,
## formatting, lints, unit, property and integration tests.
# The binaries first: the process tests start them, never build them, and refuse
# one older than a source it is built from (local-cluster/src/binaries.rs).
test: deps lint
	$(CARGO) build --workspace --bins
	$(CARGO) test --workspace

lint: deps
	third_party/usearch/scripts/apply-patches.sh --check
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

## Criterion benchmark of the streaming merge.
bench-merge: deps
	$(CARGO) bench -p recsys-gateway --bench merge

clean-demo:
	rm -rf target/demo-bundle

## Container images: IMAGES=offline (default; binaries built here plus the libraries
## they link, `docker import`, no registry needed), docker (deploy/Dockerfile,
## multi-stage, pulls rust and debian images) or none (use the images present).
IMAGES ?= offline
export IMAGES

images: deps
	deploy/compose.sh images

## docker compose cluster (deploy/docker-compose.yml): etcd, 2 shards x 2 replicas,
## 2 ranking nodes, gateway on 127.0.0.1:$(RECSYS_GATEWAY_PORT); TLS, mutual TLS
## and etcd auth on (certificates made at up; the client's in target/compose-certs).
RECSYS_GATEWAY_PORT ?= 50051
export RECSYS_GATEWAY_PORT

compose-up: deps
	deploy/compose.sh up

compose-down:
	deploy/compose.sh down

## Up, the compose tests through the published gateway (stopping and starting
## containers under load), down.
compose-test: deps
	deploy/compose.sh test

## The Kubernetes manifests as kubectl applies them.
k8s-render:
	kubectl kustomize deploy/k8s

## The Secrets the manifests mount (certificates, etcd passwords), into the
## current kubectl context; apply the manifests after.
k8s-secrets:
	deploy/k8s/secrets.sh
