#!/usr/bin/env bash
# The browser tests, in headless Chromium on WebGPU (SwiftShader where there
# is no GPU): every kernel and one PnP translation against the PyTorch
# fixtures (wasm-bindgen-test), then the page end to end (playwright-core;
# it reads its download back with the release pnp binary), then `pnp
# eval`'s HTML report.
# Needs Debian's chromium and chromium-driver, node/npm, the
# wasm32-unknown-unknown target and wasm-bindgen-cli at Cargo.lock's
# wasm-bindgen version; `.ci/run` installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner
export CHROMEDRIVER="${CHROMEDRIVER:-/usr/bin/chromedriver}"
export WASM_BINDGEN_TEST_TIMEOUT="${WASM_BINDGEN_TEST_TIMEOUT:-900}"
cargo test --release --target wasm32-unknown-unknown -p pnp-web
bash web/build.sh
(cd web && npm ci --no-audit --no-fund)
node web/tests/page.test.mjs
# `pnp eval --html`'s report page (needs the release build of the pnp binary).
node web/tests/report.test.mjs
