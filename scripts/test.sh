#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what the tests need,
# then runs formatting, lints, every test, and checks that benches and
# examples build. README.md names this script; .ci/run calls it.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

# redis-server for the Redis backend's tests and the comparison bench.
if ! command -v redis-server >/dev/null 2>&1; then
  step "installing redis-server (Debian package)"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null
fi

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, all features, -D warnings)"
cargo clippy --all-targets --all-features -- -D warnings

step "cargo doc (all features, -D warnings)"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --all-features

step "cargo test (all features; release, since the concurrency and crash tests are heavy)"
cargo test --release --all-features

step "cargo test --no-default-features (the core builds alone)"
cargo test --release --no-default-features --lib

step "loom models (tests/loom_models.rs, built with --cfg idemlog_loom)"
RUSTFLAGS="--cfg idemlog_loom" CARGO_TARGET_DIR=target/loom cargo test --release --test loom_models

step "fuzzing: every cargo-fuzz target for ${IDEMLOG_FUZZ_SECONDS:-60} s"
bash fuzz/run-all.sh "${IDEMLOG_FUZZ_SECONDS:-60}"

step "benches and examples compile"
cargo bench --all-features --no-run
cargo build --release --all-features --examples

step "benchmark smoke run: every comparison row but Redis, 1 s each (figures are not judged here)"
cargo bench --bench compare -- --quick --no-redis

step "demo: retry storm"
cargo run --release --example retry_storm
