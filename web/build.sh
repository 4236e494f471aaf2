#!/usr/bin/env bash
# Builds the page's wasm module: web/pkg/pnp_web.js and pnp_web_bg.wasm,
# imported by web/main.js. Needs the wasm32-unknown-unknown target and a
# wasm-bindgen CLI of the same version as the wasm-bindgen crate in Cargo.lock.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --target wasm32-unknown-unknown -p pnp-web
# The target folder cargo really uses (CARGO_TARGET_DIR, a config's
# build.target-dir), not an assumed ./target.
target_dir=$(cargo metadata --format-version 1 --no-deps |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
wasm-bindgen --target web --no-typescript --out-dir web/pkg \
    "$target_dir/wasm32-unknown-unknown/release/pnp_web.wasm"
ls -l web/pkg
