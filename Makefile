# The two commands of the README: `make demo` and `make test`.
CARGO ?= cargo
# Extra flags for `recsys demo`, e.g. make demo ARGS="--items 500000 --shards 4".
ARGS ?=

.PHONY: deps demo test lint fmt bench bench-merge clean-demo

deps:
	@scripts/install-deps.sh

## Build a synthetic bundle, start a local cluster on loopback, print samples, serve until Ctrl-C.
demo: deps
	$(CARGO) run -q -p recsys-cli -- demo $(ARGS)

## Everything CI checks: formatting, lints, unit, property and integration tests.
test: deps lint
	$(CARGO) test --workspace

lint: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

## Criterion benchmark of the streaming merge.
bench-merge: deps
	$(CARGO) bench -p recsys-gateway --bench merge

clean-demo:
	rm -rf target/demo-bundle
