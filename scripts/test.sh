#!/usr/bin/env bash
# Every check CI runs: formatting, lints, then all tests of the workspace.
# Installs what the tests need on a fresh machine (nothing beyond the Rust toolchain yet).
set -euo pipefail
cd "$(dirname "$0")/.."

# Build outside the clone so repeated runs reuse it; a fresh machine simply starts it empty.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/hyphae-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --locked --no-fail-fast
else
    echo "cargo-nextest not found: running the tests with cargo test instead" >&2
    cargo test --workspace --locked --lib --bins --tests --no-fail-fast
fi
