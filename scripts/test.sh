#!/usr/bin/env bash
# Runs Flumen's whole test suite: formatting, lints, and every test against
# the real services it needs, which this script starts and stops.
#
#   scripts/test.sh
#
# Builds go to $CARGO_TARGET_DIR (default ~/.cache/flumen/target), so that
# repeated runs, and runs from other clones, reuse the compiled dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/flumen/target}"

step() { printf '\n==> %s\n' "$*"; }

step "formatting"
cargo fmt --all -- --check

step "one build of the dependencies for the binary, examples and benches"
scripts/same-features.sh

step "lints"
cargo clippy --workspace --all-targets --all-features -- -D warnings

step "test services"
. scripts/services.sh
start_services

step "tests"
cargo test --workspace --all-features
