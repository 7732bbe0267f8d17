# Palisade — run `make` or `make help` for the list of targets.

GO ?= go
BUF := $(GO) tool -modfile=tools/go.mod buf
# The test demo runs on its own ports and state directory, so it does not
# collide with services started by `make up`.
TEST_DEMO_ENV := USER_ADDR=127.0.0.1:18443 ORDER_ADDR=127.0.0.1:19443

.DEFAULT_GOAL := help
# Fuzz targets: package and function. Seed corpora are committed under each
# package's testdata/fuzz/<target>/ (and added in the tests). `make test`
# runs each for TEST_FUZZTIME, `make fuzz` for FUZZTIME (FUZZTIME=1m make fuzz).
FUZZ_TARGETS := ./security/token:FuzzVerify ./security/spiffeid:FuzzParse \
	./security/password:FuzzVerify ./rpc:FuzzBearer \
	./security/spiffeid:FuzzFromCertificate ./policy:FuzzMessageValue \
	./security/token:FuzzParseJWKS
FUZZTIME ?= 30s
TEST_FUZZTIME ?= 3s

.PHONY: help generate check-generate build test test-go test-demo test-fuzz fuzz vet demo up down

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  \033[1m%-16s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

generate: ## regenerate the Go code in proto/ from the .proto files (buf via go tool)
	find proto -name '*.pb.go' -delete
	find proto -type d -name '*connect' -prune -exec rm -rf {} +
	$(BUF) lint
	$(BUF) generate

check-generate: ## fail when the generated code in proto/ is stale
	scripts/check-generated.sh

build: ## build bin/usersvc, bin/ordersvc and bin/palisade
	$(GO) build -o bin/ ./cmd/usersvc ./cmd/ordersvc ./cmd/palisade

vet: ## go vet and a gofmt check
	$(GO) vet ./...
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

test: vet check-generate test-go test-fuzz test-demo ## the whole suite: vet, generated-code check, go test -race, short fuzzing, the demo
	@echo "make test: all passed"

test-go: ## go test -race ./...
	$(GO) test -race -count=1 ./...

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

demo: build ## mint a dev PKI if missing, start both services, play the scenario with curl, stop
	scripts/demo.sh

up: build ## start both services in the background (returns once they are healthy)
	scripts/up.sh

down: ## stop the services started by `make up`
	scripts/down.sh
