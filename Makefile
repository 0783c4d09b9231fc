# nbdroot — boot Linux from a root filesystem served over NBD.
#
#   make            build bin/nbdroot (static, CGO-free)
#   make deps       install what tests and the demo need (Debian; idempotent)
#   make test       every test, QEMU boots included
#   make demo       boot QEMU from an NBD root served on loopback
#   make lint       gofmt, go mod tidy, go vet, staticcheck
#   make fuzz       every fuzz target for FUZZTIME (60s) each
#   make bench      handshake, keeper and reconnect benchmarks
#   make bench-boot the boot timeline under QEMU, against the floor (qemu-test/floor.sh)
#   make bench-lab  four lab boots at once
#   make bench-distro, test-distro  the Debian root (see below)

GO        ?= go
# BIN is where `make build` writes the binary; the QEMU tests build theirs
# through this target (make build BIN=...), so that what they boot is what
# `make` builds.
BIN       := bin/nbdroot
GOFLAGS   := -trimpath
LDFLAGS   := -s -w
FUZZTIME  ?= 60s
APT_PKGS  := qemu-system-x86 qemu-utils nbdkit nbd-server linux-image-amd64 \
             e2fsprogs busybox-static openssl cpio dnsmasq-base iproute2 ipxe-qemu \
             mmdebstrap systemd xz-utils zstd
# staticcheck runs from the Go module proxy at this version (go run caches
# the build), so lint needs nothing installed beyond Go.
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2
export CGO_ENABLED := 0

.PHONY: all build deps test test-short lint fuzz bench bench-boot demo clean

all: build

build:
	@mkdir -p $(dir $(BIN))
	$(GO) build $(GOFLAGS) -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/nbdroot

# deps installs only what is missing, so a second run is quick and silent.
# It says in one line what it installs; apt's output is shown only if apt
# fails.
deps:
	@missing=$$(for p in $(APT_PKGS); do \
		dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; \
	done); \
	if [ -n "$$missing" ]; then \
		echo "deps: installing" $$missing; \
		SUDO=$$( [ $$(id -u) -eq 0 ] || echo sudo ); \
		log=$$(mktemp); \
		if ! { $$SUDO apt-get update -qq && \
			$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
		} >$$log 2>&1; then \
			cat $$log >&2; rm -f $$log; echo "deps: apt-get failed" >&2; exit 1; \
		fi; \
		rm -f $$log; \
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
	@$(GO) mod tidy -diff || { echo "go.mod or go.sum is not tidy: run go mod tidy" >&2; exit 1; }
	$(GO) vet ./...
	$(GO) run $(STATICCHECK) ./...

fuzz:
	@for pkg in $$($(GO) list ./...); do \
		for f in $$($(GO) test -list '^Fuzz' $$pkg 2>/dev/null | grep '^Fuzz'); do \
			echo "fuzz: $$pkg $$f ($(FUZZTIME))"; \
			$(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; \
		done; \
	done

# bench: the handshake (5 runs), then under QEMU the keeper's memory and
# sequential read (BenchmarkKeeper) and I/O resumption after a server
# restart (BenchmarkResume). Figures are medians; see README.md.
bench: deps build
	$(GO) test -run '^$$' -bench . -benchmem -count 5 ./negotiate/ ./boot/
	$(GO) test -run '^$$' -bench 'BenchmarkKeeper|BenchmarkResume' -benchtime 3x -timeout 30m ./qemu-test/

bench-boot: deps build
	$(GO) test -run '^$$' -bench BenchmarkBoot -benchtime 5x -timeout 30m ./qemu-test/

demo: deps build
	./qemu-test/demo.sh

clean:
	rm -rf bin

# uroot-initramfs builds a u-root image: one gobusybox binary holding
# nbdroot (as /init) and a few u-root core commands, gosh as /bin/sh, on a
# base archive of nbdroot's kernel modules and standard files from
# `nbdroot mkinitramfs --base-only`. u-root and the commands are the
# versions in go.mod (pinned by tools.go), built from the module cache.
# UROOT_MKFLAGS go to mkinitramfs (e.g. --kernel /boot/vmlinuz-VERSION
# --config nbdroot.toml); UROOT_CMDS are the u-root commands. goshsmall
# gives gosh a plain line reader that works on a serial console.
UROOT         := bin/u-root
UROOT_CMDS    ?= gosh ls cat ip dmesg mount ps
UROOT_MKFLAGS ?=
UROOT_IMG     := bin/uroot-initramfs.cpio.gz

.PHONY: uroot uroot-initramfs gosh

uroot:
	@mkdir -p bin
	$(GO) build $(GOFLAGS) -o $(UROOT) github.com/u-root/u-root

uroot-initramfs: build uroot
	$(BIN) mkinitramfs --base-only -o bin/uroot-base.cpio $(UROOT_MKFLAGS)
	GOROOT="$$($(GO) env GOROOT)" $(UROOT) -o bin/uroot-initramfs.cpio -base bin/uroot-base.cpio \
		-initcmd=nbdroot -defaultsh=gosh -go-build-tags=goshsmall \
		./cmd/nbdroot $(addprefix github.com/u-root/u-root/cmds/core/,$(UROOT_CMDS))
	gzip -9nf bin/uroot-initramfs.cpio
	@echo "uroot-initramfs: $(UROOT_IMG) ($$(du -k $(UROOT_IMG) | cut -f1) KiB)"

# gosh builds u-root's shell alone, static, as a rescue shell for nbdroot's
# own initramfs: bin/nbdroot mkinitramfs -o FILE --shell bin/gosh.
gosh:
	@mkdir -p bin
	$(GO) build $(GOFLAGS) -tags goshsmall -ldflags '$(LDFLAGS)' -o bin/gosh github.com/u-root/u-root/cmds/core/gosh

# test-distro boots a stock Debian 12 root (built by mmdebstrap, cached in
# $XDG_CACHE_HOME/nbdroot or ~/.cache/nbdroot; fresh when CI is set) with
# each network stack (ifupdown, systemd-networkd, NetworkManager): boot to
# `running`, restart the network service under a writer, power off or
# reboot; and once with `ro` (systemd-fsck-root, systemd-remount-fs).
# `make test` runs it too; this target runs only it, with every console
# (NBDROOT_TEST_CONSOLE=1).
.PHONY: test-distro

test-distro: deps build
	NBDROOT_TEST_CONSOLE=1 $(GO) test -count=1 -v -run '^TestDistro$$' -timeout 60m ./qemu-test/

# bench-distro: kernel start → `running` and `systemctl poweroff` → power-off
# for the same Debian root (ifupdown, as a stock server install) booted
# through nbdroot and through Debian's initramfs-tools + nbd-client (its
# initramfs is built inside the cached root, once), and nbdroot's root
# keeper's memory at 60 s; medians of 3 boots; see README.md.
.PHONY: bench-distro

bench-distro: deps build
	$(GO) test -run '^$$' -bench BenchmarkDistro -benchtime 3x -timeout 120m ./qemu-test/

# bench-lab: four guests boot at once in the lab network (a namespace with
# a bridge, taps and dnsmasq; see docs/lab) from one read-only export with
# overlays; the median and the slowest wall time from QEMU's start to the
# root's init, over 3 rounds.
.PHONY: bench-lab

bench-lab: deps build
	$(GO) test -run '^$$' -bench BenchmarkLabFourBoots -benchtime 3x -timeout 30m ./qemu-test/
