#!/usr/bin/env bash
# The test command of the README and of CI: checks formatting, runs every test
# of the workspace (unit, integration, doc tests) with all features, and checks
# that the API documentation builds without warnings.
# Installs nothing today; later features that need system packages install
# them here (or print the command to run when not root).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is not installed: see https://rustup.rs" >&2
  exit 1
fi
cargo fmt --all -- --check
# Release profile: the end-to-end tests run the examples on real inputs.
cargo test --release --workspace --all-features "$@"
# The API docs build without broken links.
RUSTDOCFLAGS="-D warnings" cargo doc --release --workspace --no-deps --all-features --quiet
