#!/usr/bin/env bash
# Every check CI runs: formatting, lints, then all tests of the workspace.
# Installs what the tests need on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages: iproute2 for the network-namespace tests, Debian's python3 with zeroconf to
# check that the mDNS service is visible to a standard DNS-SD tool, headless Chromium with
# chromedriver for the browser tests, and Node.js with npm for the web clients. Without them (or
# without root) those tests print SKIPPED with the reason (under CI=true they fail).
need=()
command -v ip >/dev/null 2>&1 || need+=(iproute2)
/usr/bin/python3 -c 'import zeroconf' >/dev/null 2>&1 || need+=(python3-zeroconf)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
    else
        echo "WARNING: cannot install ${need[*]} (not root or no apt-get): namespace, mDNS and browser tests will skip" >&2
    fi
fi

# matrix-nio, a real Python Matrix client, with its end-to-end encryption (vodozemac), in a
# virtualenv outside the clone (reused between runs).
venv="${HYPHAE_VENV:-$HOME/.cache/hyphae-venv}"
if ! "$venv/bin/python" -c 'import nio, vodozemac' >/dev/null 2>&1; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q 'matrix-nio[e2e]==0.26.0'
fi
export HYPHAE_NIO_PYTHON="$venv/bin/python"

# The web clients (matrix-js-sdk, Hydrogen's hydrogen-view-sdk, esbuild) exactly as locked in
# tests/clients, installed outside the clone and reused while the lock file is unchanged; then
# the Hydrogen page built from them, kept under a key of the lock file and the page's sources so
# a change to either rebuilds it.
if command -v npm >/dev/null 2>&1; then
    js="${HYPHAE_JS:-$HOME/.cache/hyphae-js}"
    if ! cmp -s tests/clients/package-lock.json "$js/package-lock.json" \
        || [ ! -d "$js/node_modules" ]; then
        rm -rf "$js/node_modules" "$js/package-lock.json"
        mkdir -p "$js"
        cp tests/clients/package.json tests/clients/package-lock.json "$js/"
        (cd "$js" && npm ci --no-audit --no-fund --loglevel=error)
    fi
    export HYPHAE_JS="$js"
    key=$(cat tests/clients/package-lock.json tests/clients/hydrogen/* | sha256sum | cut -c1-16)
    page="$js/hydrogen-$key"
    if [ ! -f "$page/index.html" ]; then
        rm -rf "$js"/hydrogen-*
        HYPHAE_JS="$js" node tests/clients/hydrogen/build.mjs "$page.partial"
        mv "$page.partial" "$page"
    fi
    export HYPHAE_HYDROGEN="$page"
fi

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
