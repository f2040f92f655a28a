#!/usr/bin/env bash
# The test command of the README and of CI: checks formatting, runs every test
# of the workspace (unit, integration, doc tests) with all features, and checks
# that the API documentation builds without warnings.
# The web UI test (tests/ui_browser.rs) drives headless Chromium: Debian's
# `chromium` package is installed here when missing (as root); when it cannot
# be, that test is skipped with a loud message (WEIR_SKIP_BROWSER=1).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is not installed: see https://rustup.rs" >&2
  exit 1
fi
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing chromium for the web UI test" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >&2 || true
  fi
  if ! command -v chromium >/dev/null 2>&1; then
    echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!" >&2
    echo "!!! chromium is not installed and cannot be (run as root: apt-get install -y chromium)" >&2
    echo "!!! THE WEB UI BROWSER TEST (tests/ui_browser.rs) WILL BE SKIPPED" >&2
    echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!" >&2
    export WEIR_SKIP_BROWSER=1
  fi
fi
cargo fmt --all -- --check
# Release profile: the end-to-end tests run the examples on real inputs.
cargo test --release --workspace --all-features "$@"
# The API docs build without broken links.
RUSTDOCFLAGS="-D warnings" cargo doc --release --workspace --no-deps --all-features --quiet
