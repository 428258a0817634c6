# shoal: build, run, test. `make run` starts a working dev node; `make test` runs every test.
SHELL := /bin/bash
GO ?= go
BIN := bin/shoal
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X github.com/shoal-dev/shoal/node.Version=$(VERSION)
HTTP_ADDR ?= 127.0.0.1:8080
FUZZTIME ?= 5s
# Packages with concurrency that CI also runs under the race detector.
RACE_PKGS ?= ./peer/... ./scheduler/... ./node/... ./httpapi/... ./breaker/... ./respcache/... ./router/... ./consensus/... ./gossip/... ./dcache/... ./engine/... ./ratelimit/... ./ops/... ./internal/workers/...

.PHONY: all build build-linux run test test-race bench bench-gateway bench-openloop lint fuzz test-cluster test-chaos test-scale sim docker-image clean

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) .

# A static linux/amd64 binary for the FROM-scratch image.
build-linux:
	CGO_ENABLED=0 GOOS=linux GOARCH=amd64 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/shoal-linux-amd64 .

run: build
	@echo
	@echo "shoal dev node starting on http://$(HTTP_ADDR)  (Ctrl-C to stop). Try:"
	@echo
	@echo "  curl -s http://$(HTTP_ADDR)/v1/chat/completions -H 'Content-Type: application/json' \\"
	@echo "    -d '{\"model\":\"tiny\",\"messages\":[{\"role\":\"user\",\"content\":\"Tell me a story\"}],\"max_tokens\":32}'"
	@echo
	./$(BIN) node start --dev --http-addr $(HTTP_ADDR)

test:
	$(GO) test -count=1 -timeout 20m ./...

test-race:
	GO=$(GO) bash .ci/race $(RACE_PKGS)

bench:
	$(GO) test -run '^$$' -bench . -benchtime 2s -timeout 30m ./scheduler/... ./node/... ./engine/... ./dcache/... ./router/...

# wrk against nginx directly, through HAProxy, bare Go (default and tuned
# net/http) and fasthttp reverse proxies, and shoal (pass-through, also with
# the openai backend's fasthttp client prototype built by -tags
# shoal_fasthttp, sim, cache hit on the local and the Olric backend,
# forwarding hop), next to a fixed-answer server on each stack (the
# cache-hit ceiling; also net/http's handler on fasthttp's server through
# fasthttpadaptor), in one table. Uses nginx,
# haproxy and wrk where installed (apt-get install -y nginx haproxy wrk).
GATEWAY_BENCH_FLAGS ?=
bench-gateway: build
	CGO_ENABLED=0 $(GO) build -trimpath -tags shoal_fasthttp -ldflags '$(LDFLAGS)' -o bin/shoal-fastclient .
	$(GO) run ./ops/gatewaybench -shoal $(BIN) -shoal-fastclient bin/shoal-fastclient $(GATEWAY_BENCH_FLAGS)

bench-openloop: build
	$(GO) run ./ops/gatewaybench -shoal $(BIN) -open-loop-rate 5000 -duration 8s -warmup 2s -rounds 3 $(GATEWAY_BENCH_FLAGS)

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	@if command -v staticcheck >/dev/null 2>&1; then staticcheck ./...; \
	elif [ -x "$$($(GO) env GOPATH)/bin/staticcheck" ]; then "$$($(GO) env GOPATH)/bin/staticcheck" ./...; \
	else echo "staticcheck not installed (go install honnef.co/go/tools/cmd/staticcheck@v0.8.2)"; fi

# Runs every fuzz target for FUZZTIME each (.ci/fuzz-one runs a target again
# once when Go's fuzzing coordinator fails it at the deadline with no input).
fuzz:
	@set -e; for pkg in $$($(GO) list ./...); do \
	  for t in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz' || true); do \
	    echo "fuzz $$pkg $$t"; GO=$(GO) .ci/fuzz-one $$pkg $$t $(FUZZTIME); \
	  done; done

# Sampled dissemination at 20 nodes against clustersim's prediction: 20 real
# shoal processes on loopback with sim backends (about 90 s; skipped by
# `make test`). The in-process variant, gossip.TestScale20, runs with
# SHOAL_SCALE_TEST=1 go test -run TestScale20 ./gossip/.
test-scale: build
	SHOAL_SCALE_TEST=1 SHOAL_SCALE_BIN=$(CURDIR)/$(BIN) $(GO) test -count=1 -timeout 8m -run 'TestScale20Processes' -v ./scaletest/

# The simulator's scaling table for 10 to 10,000 nodes (README, "Scaling").
sim:
	$(GO) run . sim

docker-image: build-linux
	docker build -t shoal:dev .

# Starts the docker-compose cluster and runs the multi-host fault tests.
test-cluster:
	@if ! command -v docker >/dev/null 2>&1 || ! docker info >/dev/null 2>&1; then \
	  if [ "$$SHOAL_SKIP_DOCKER" = "1" ]; then echo "docker unavailable: skipping cluster tests (SHOAL_SKIP_DOCKER=1)"; exit 0; fi; \
	  echo "docker is not available: the cluster tests need Docker Engine (set SHOAL_SKIP_DOCKER=1 to skip)"; exit 1; fi
	$(MAKE) docker-image
	SHOAL_DOCKER_TESTS=1 $(GO) test -count=1 -timeout 15m -run 'TestDockerCluster' -v ./node/...

# The chaos suite: real nodes in network namespaces (needs root, iproute2 and
# nftables), faults under load, one table printed and written to chaos-results.md.
# SHOAL_CHAOS_QUICK=1 runs fewer repetitions; SHOAL_CHAOS_ONLY=regexp picks scenarios.
test-chaos: build
	SHOAL_CHAOS=1 SHOAL_CHAOS_BIN=$(CURDIR)/$(BIN) SHOAL_CHAOS_OUT=$(CURDIR)/chaos-results.md \
	  $(GO) test -count=1 -timeout 20m -run '^TestChaos$$' -v ./chaos/

clean:
	rm -rf bin
