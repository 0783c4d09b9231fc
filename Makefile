# nbdroot — boot Linux from a root filesystem served over NBD.
#
#   make            build bin/nbdroot (static, CGO-free)
#   make deps       install what tests and the demo need (Debian; idempotent)
#   make test       every test, QEMU boots included
#   make demo       boot QEMU from an NBD root served on loopback
#   make lint       gofmt + go vet
#   make fuzz       every fuzz target for FUZZTIME (60s) each
#   make bench      handshake benchmarks; make bench-boot: boot timeline

GO        ?= go
BIN       := bin/nbdroot
GOFLAGS   := -trimpath
LDFLAGS   := -s -w
FUZZTIME  ?= 60s
APT_PKGS  := qemu-system-x86 qemu-utils nbdkit nbd-server linux-image-amd64 \
             e2fsprogs busybox-static openssl cpio
export CGO_ENABLED := 0

.PHONY: all build deps test test-short lint fuzz bench bench-boot demo clean

all: build

build:
	@mkdir -p bin
	$(GO) build $(GOFLAGS) -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/nbdroot

# deps installs only what is missing, so a second run is quick and silent.
deps:
	@missing=$$(for p in $(APT_PKGS); do \
		dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; \
	done); \
	if [ -n "$$missing" ]; then \
		echo "deps: installing $$missing"; \
		SUDO=$$( [ $$(id -u) -eq 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
	@$(GO) mod download

test: deps build lint
	$(GO) test -count=1 -timeout 45m ./...

# test-short skips the QEMU boots (quick loop while editing).
test-short: build
	$(GO) test -count=1 -short ./...

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

fuzz:
	@for pkg in $$($(GO) list ./...); do \
		for f in $$($(GO) test -list '^Fuzz' $$pkg 2>/dev/null | grep '^Fuzz'); do \
			echo "fuzz: $$pkg $$f ($(FUZZTIME))"; \
			$(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; \
		done; \
	done

bench: deps build
	$(GO) test -run '^$$' -bench . -benchmem -count 5 ./negotiate/

bench-boot: deps build
	$(GO) test -run '^$$' -bench BenchmarkBoot -benchtime 5x -timeout 30m ./qemu-test/

demo: deps build
	./qemu-test/demo.sh

clean:
	rm -rf bin
