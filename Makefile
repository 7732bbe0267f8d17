# Palisade — run `make` or `make help` for the list of targets.

GO ?= go
BUF := $(GO) tool -modfile=tools/go.mod buf
# The test demo runs on its own ports and state directory, so it does not
# collide with services started by `make up`.
TEST_DEMO_ENV := USER_ADDR=127.0.0.1:18443 ORDER_ADDR=127.0.0.1:19443
# The test cluster demo's: 18543-18544 and 19543-19545, admin listeners 10
# above; none of the test demo's (18443, 18445, 19443-19445).
TEST_DEMO_CLUSTER_ENV := CLUSTER_USER_ADDR=127.0.0.1:18543 CLUSTER_ORDER_ADDR=127.0.0.1:19543

.DEFAULT_GOAL := help
# Fuzz targets: package and function. Seed corpora are committed under each
# package's testdata/fuzz/<target>/ (and added in the tests). `make test`
# runs each for TEST_FUZZTIME, `make fuzz` for FUZZTIME (FUZZTIME=1m make fuzz).
FUZZ_TARGETS := ./security/token:FuzzVerify ./security/spiffeid:FuzzParse \
	./security/password:FuzzVerify ./rpc/internal/header:FuzzBearer \
	./security/spiffeid:FuzzFromCertificate ./policy/internal/protovalue:FuzzMessageValue \
	./security/token:FuzzParseJWKS ./rpc/internal/header:FuzzRequestID
FUZZTIME ?= 30s
TEST_FUZZTIME ?= 3s
# `make bench` flags beyond the issue's defaults, e.g. BENCH_FLAGS="--duration 10s --rounds 6".
BENCH_FLAGS ?=
# `make bench-fanout` flags, e.g. BENCH_FANOUT_FLAGS="--sizes 10,100 --json fanout.json".
BENCH_FANOUT_FLAGS ?=
# The micro-benchmarks of the chain's parts, run by `make bench-micro`.
BENCH_MICRO := -bench='^(BenchmarkVerify|BenchmarkDefaultPolicy|BenchmarkPrincipal|BenchmarkChain)$$' -benchtime=1s \
	./security/token ./policy ./rpc
# The Connect conformance suite's runner (connectrpc.com/conformance), pinned;
# `make conformance` installs it into bin/ with go install.
CONFORMANCE_VERSION := v1.0.7

# SPIRE for `make spire-e2e`: spire-server and spire-agent, pinned as tools
# in their own module (tools/spire/go.mod, v1.13.3), built into bin/spire
# once (a cold build takes 11+ minutes of CPU). SPIRE_BIN=dir uses
# binaries from dir instead.
SPIRE_BIN ?= bin/spire

# Extra flags for `make load` and `make soak` (bin/palisade load --help).
LOAD_FLAGS ?=

.PHONY: help generate check-generate build deps test test-rest test-go test-deploy test-demo test-demo-cluster test-fuzz fuzz vet demo demo-cluster up down bench bench-micro conformance load soak

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z0-9-]+:.*## / {printf "  \033[1m%-18s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

generate: ## regenerate the Go code in proto/ and conformance/gen from the .proto files (buf via go tool)
	$(GO) -C tools run ./validateproto -out ../third_party/protovalidate
	find proto -name '*.pb.go' -delete
	find proto -type d -name '*connect' -prune -exec rm -rf {} +
	$(BUF) lint
	$(BUF) generate
	rm -rf conformance/gen
	cd conformance && $(GO) tool -modfile=../tools/go.mod buf lint && $(GO) tool -modfile=../tools/go.mod buf generate

check-generate: ## fail when the generated code in proto/ is stale
	scripts/check-generated.sh

build: ## build bin/usersvc, bin/ordersvc and bin/palisade
	$(GO) build -o bin/ ./cmd/usersvc ./cmd/ordersvc ./cmd/palisade

# vet type-checks the packages as test-go builds them (-race): in make test
# it then reuses test-go's compiled packages, where a plain vet would
# compile every package and its test variant a second time. No file of ours
# is race-tagged, so it sees the same code.
vet: ## go vet and a gofmt check
	$(GO) vet -race ./...
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

deps: ## install what the tests need beyond Go: PostgreSQL (store tests), redis-server (fan-out bench and its test); quiet when present
	@scripts/install-deps.sh

test: deps ## the whole suite: go test -race beside the rest (generated-code check, short fuzzing, vet, the Kubernetes manifests, the demos, the conformance suite)
	@$(MAKE) --no-print-directory -j2 --output-sync=target test-go test-rest
	@echo "make test: all passed"

# The part of `make test` that runs beside test-go, one target after the
# other: test-go's tests spend much of their time waiting (timeouts, servers
# starting, slow clients on purpose) and these targets are mostly
# compilation, so on two cores the two streams together take far less than
# one after the other (on a fresh clone, with empty build and module caches,
# the whole suite is mostly compilation). check-generate and build come
# first because test-go's adopter test runs buf and builds the packages
# without -race as well: once they are built, both use them.
REST_TARGETS := check-generate build test-fuzz vet test-deploy test-demo test-demo-cluster conformance
test-rest:
	@for t in $(REST_TARGETS); do $(MAKE) --no-print-directory $$t || exit 1; done

test-go: ## go test -race ./...
	$(GO) test -race -count=1 ./...

test-deploy: ## render deploy/k8s with kubectl kustomize and check every object (its own module, deploy/go.mod)
	cd deploy && $(GO) vet ./... && $(GO) test -count=1 ./...

test-fuzz: ## a short run (TEST_FUZZTIME, 3s) of every fuzz target
	@$(MAKE) --no-print-directory fuzz FUZZTIME=$(TEST_FUZZTIME)

fuzz: ## run every fuzz target for FUZZTIME (default 30s)
	@for t in $(FUZZ_TARGETS); do \
	  pkg=$${t%%:*}; fn=$${t##*:}; echo "fuzz $$pkg $$fn ($(FUZZTIME))"; \
	  $(GO) test -run='^$$' -fuzz="^$$fn$$" -fuzztime=$(FUZZTIME) $$pkg >/tmp/palisade-fuzz.$$$$ 2>&1 || { cat /tmp/palisade-fuzz.$$$$; rm -f /tmp/palisade-fuzz.$$$$; exit 1; }; \
	  tail -n 3 /tmp/palisade-fuzz.$$$$ | grep -E '^fuzz: elapsed' | tail -n 1; rm -f /tmp/palisade-fuzz.$$$$; \
	done

test-demo: build ## the demo on its own ports and a temporary state directory
	@home=$$(mktemp -d); trap 'rm -rf "$$home"' EXIT; \
	  PALISADE_HOME=$$home $(TEST_DEMO_ENV) scripts/demo.sh

demo: build ## mint a dev PKI if missing, start usersvc and two ordersvc replicas, play the scenario with curl, stop
	scripts/demo.sh

test-demo-cluster: build ## the cluster demo on its own ports and a temporary state directory (its logs printed if it fails)
	@home=$$(mktemp -d); trap 'rm -rf "$$home"' EXIT; \
	  PALISADE_HOME=$$home $(TEST_DEMO_CLUSTER_ENV) scripts/demo-cluster.sh || \
	  { tail -n 20 "$$home"/logs/cluster/*.log; exit 1; }

demo-cluster: build ## throwaway PostgreSQL, 2 usersvc and 3 ordersvc replicas; kill a usersvc mid-scenario; check nothing idempotent fails
	scripts/demo-cluster.sh

conformance: ## the Connect conformance suite through the full chain: its default suite over mTLS, then the token suite
	GOBIN=$(CURDIR)/bin $(GO) install connectrpc.com/conformance/cmd/connectconformance@$(CONFORMANCE_VERSION)
	$(GO) build -o bin/ ./conformance/cmd/conformance-server ./conformance/cmd/conformance-suites
	@CONFORMANCE_VERSION=$(CONFORMANCE_VERSION) scripts/conformance.sh

up: build ## start both services in the background (returns once they are healthy)
	scripts/up.sh

down: ## stop the services started by `make up`
	scripts/down.sh

bench: build ## measure the chain against bare Connect and grpc-go (c=64); table on stdout, rows in bench.json
	bin/palisade bench --concurrency 64 --json bench.json $(BENCH_FLAGS)

bench-micro: ## micro-benchmarks: token verification, policy evaluation, Principal extraction, the whole chain in-process
	$(GO) test -run='^$$' $(BENCH_MICRO)

load: build ## 100,000 calls at 64 concurrency through the full chain on in-process sample services; fails on any error
	bin/palisade load --calls 100000 --concurrency 64 $(LOAD_FLAGS)

soak: build ## 2 minutes of load; reports RSS and goroutines at start and end, fails if they grow past the bounds
	bin/palisade load --soak 2m --concurrency 64 $(LOAD_FLAGS)

.PHONY: bench-fanout bench-invalidation
bench-fanout: deps build ## the change feed fanned out to 1-1,000 subscribers against Redis pub/sub over TLS, same run (a few minutes)
	bin/palisade bench-fanout $(BENCH_FANOUT_FLAGS)

bench-invalidation: ## invalidation latency, from a user change's commit to each of 3 order replicas (p50/p99/max)
	$(GO) test -run='^$$' -bench='^BenchmarkInvalidationLatency$$' -benchtime=500x ./services/e2e

.PHONY: spire-e2e
spire-e2e: build $(if $(filter bin/spire,$(SPIRE_BIN)),bin/spire/spire-server bin/spire/spire-agent) ## opt-in, ~3 min (not in make test): SPIRE server and agent, services with --spiffe-socket, CreateOrder through 2 SVID rotations, no failed call
	$(GO) build -o bin/ ./cmd/internal/spire-e2e
	SPIRE_BIN=$(SPIRE_BIN) scripts/spire-e2e.sh

bin/spire/spire-server bin/spire/spire-agent: tools/spire/go.mod tools/spire/go.sum
	$(GO) -C tools/spire build -o $(CURDIR)/bin/spire/ github.com/spiffe/spire/cmd/$(@F)
