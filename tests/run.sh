#!/usr/bin/env bash
# The test command of the README and of CI: checks formatting, runs every test
# of the workspace (unit, integration, doc tests) with all features, and checks
# that the API documentation builds without warnings.
# The web UI test (tests/ui_browser.rs) drives headless Chromium: Debian's
# `chromium` package is installed here when missing (as root); when it cannot
# be, that test is left out by name (cargo counts it as filtered out) with a
# loud message before and after the run.
# The `rocksdb` feature compiles RocksDB from C++ sources: it needs a C++
# compiler and libclang (for bindgen). What is missing is installed with
# apt-get when running as root; otherwise the exact command is printed and
# the script exits non-zero. (`cargo run --release --example wordcount`
# needs none of this: rocksdb is not a default feature.)
# The S3 storage tests need python3 with moto[server], the Kafka connector
# tests noida-db, the OpenAPI test schemathesis, the deployment test
# kubernetes-validate (all pip-installed below).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is not installed: see https://rustup.rs" >&2
  exit 1
fi

have_libclang() {
  if [ -n "${LIBCLANG_PATH:-}" ] && ls "$LIBCLANG_PATH"/libclang*.so* >/dev/null 2>&1; then
    return 0
  fi
  if command -v ldconfig >/dev/null 2>&1 && ldconfig -p 2>/dev/null | grep -q 'libclang[-.0-9]*\.so'; then
    return 0
  fi
  ls /usr/lib/llvm-*/lib/libclang*.so* /usr/lib/x86_64-linux-gnu/libclang*.so* \
    /usr/lib64/libclang*.so* /usr/local/lib/libclang*.so* >/dev/null 2>&1
}
have_cxx() {
  command -v c++ >/dev/null 2>&1 || command -v g++ >/dev/null 2>&1 || command -v clang++ >/dev/null 2>&1
}

missing=()
have_libclang || missing+=(libclang-dev)
have_cxx || missing+=(g++)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing ${missing[*]} (needed by the rocksdb feature)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "the rocksdb feature needs ${missing[*]}, which is not installed; run:" >&2
    echo "  sudo apt-get update && sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
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
    skip_browser=1
  fi
fi
# The S3 storage tests (tests/storage_s3.rs) start moto's S3-compatible
# server (PyPI: moto[server]) on 127.0.0.1; installed here when missing.
# Without it those tests fail with the command that installs it.
if ! python3 -c "import moto.server, flask, werkzeug" >/dev/null 2>&1; then
  echo "installing moto[server] for the S3 storage tests" >&2
  python3 -m pip install --quiet --disable-pip-version-check "moto[server]>=5,<6" >&2 || {
    echo "cannot install moto[server]; run: python3 -m pip install 'moto[server]'" >&2
    exit 1
  }
fi
# The Kafka connector's tests (tests/kafka_connector.rs) start noida-db
# (PyPI: noida-db, a local server that speaks the Kafka protocol) on
# 127.0.0.1; installed here when missing (WEIR_NOIDA_DB may name another
# one). Without it those tests fail with the command that installs it.
if [ -z "${WEIR_NOIDA_DB:-}" ] && ! noida-db version >/dev/null 2>&1; then
  echo "installing noida-db for the Kafka connector tests" >&2
  python3 -m pip install --quiet --disable-pip-version-check "noida-db==0.2.3" >&2 || {
    echo "cannot install noida-db; run: python3 -m pip install 'noida-db==0.2.3'" >&2
    exit 1
  }
fi
# The OpenAPI test (tests/rest_schemathesis.rs) runs schemathesis (PyPI)
# against live jobs; installed here when missing. Without it that test fails
# with the command that installs it.
if ! command -v schemathesis >/dev/null 2>&1 && ! python3 -c "import schemathesis" >/dev/null 2>&1; then
  echo "installing schemathesis for the OpenAPI test" >&2
  python3 -m pip install --quiet --disable-pip-version-check "schemathesis==4.32.5" >&2 || {
    echo "cannot install schemathesis; run: python3 -m pip install 'schemathesis==4.32.5'" >&2
    exit 1
  }
fi
# The deployment test (tests/deploy_kubernetes.rs) validates deploy/kubernetes/
# offline against the Kubernetes schemas with kubernetes-validate (PyPI; it
# brings PyYAML, which the test reads the manifests with); installed here when
# missing. Without it that test fails with the command that installs it.
if ! python3 -c "import kubernetes_validate, yaml" >/dev/null 2>&1; then
  echo "installing kubernetes-validate for the deployment test" >&2
  python3 -m pip install --quiet --disable-pip-version-check "kubernetes-validate==1.37.0" >&2 || {
    echo "cannot install kubernetes-validate; run: python3 -m pip install 'kubernetes-validate==1.37.0'" >&2
    exit 1
  }
fi
# The network-namespace cluster test (tests/cluster_netns.rs) makes two
# namespaces joined by a veth pair (`ip netns`, iproute2, as root); iproute2
# is installed here when missing. Where namespaces cannot be made the test is
# left out by name (cargo counts it as filtered out), said before and after.
if [ "$(id -u)" = 0 ] && ! command -v ip >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  echo "installing iproute2 for the network-namespace cluster test" >&2
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2) >&2 || true
fi
netns_probe="weir-probe-$$"
if command -v ip >/dev/null 2>&1 && ip netns add "$netns_probe" >/dev/null 2>&1; then
  ip netns del "$netns_probe" >/dev/null 2>&1 || true
else
  echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!" >&2
  echo "!!! network namespaces cannot be made here (needs root and iproute2: apt-get install -y iproute2)" >&2
  echo "!!! THE NETWORK-NAMESPACE CLUSTER TEST (tests/cluster_netns.rs) WILL BE SKIPPED" >&2
  echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!" >&2
  skip_netns=1
fi
# The test binaries carry this checkout's absolute path (env!("CARGO_MANIFEST_DIR"),
# env!("CARGO_BIN_EXE_weir")), but cargo judges them fresh by the sources' contents
# and times alone. With a target directory shared by two checkouts at different
# paths (a cache in $HOME), it would run binaries that point into the other one and
# every test that starts the example fails with "No such file or directory". When
# the target directory was last used from another path, touch the workspace's
# sources: only weir's own crates rebuild, the dependencies stay cached.
target_dir="${CARGO_TARGET_DIR:-target}"
mkdir -p "$target_dir"
if [ "$(cat "$target_dir/.weir-checkout" 2>/dev/null || true)" != "$PWD" ]; then
  find . -path ./target -prune -o -name '*.rs' -print0 | xargs -0 -r touch
  echo "$PWD" >"$target_dir/.weir-checkout"
fi
cargo fmt --all -- --check
# Release profile: the end-to-end tests run the examples on real inputs.
# A skipped browser test is filtered out by name, so cargo's summary counts it
# as "filtered out" (never as passed), and said again at the end.
browser_test=ui_shows_checkpoints_and_kill_restarts_a_subtask
netns_test=wordcount_across_network_namespaces_survives_a_taskmanager_kill
skips=()
if [ -n "${skip_browser:-}" ]; then
  skips+=(--skip "$browser_test")
fi
if [ -n "${skip_netns:-}" ]; then
  skips+=(--skip "$netns_test")
fi
cargo test --release --workspace --all-features "$@" -- "${skips[@]}"
# The API docs build without broken links.
RUSTDOCFLAGS="-D warnings" cargo doc --release --workspace --no-deps --all-features --quiet
if [ -n "${skip_browser:-}" ]; then
  echo "SKIPPED: tests/ui_browser.rs::$browser_test (chromium is not installed: apt-get install -y chromium)" >&2
fi
if [ -n "${skip_netns:-}" ]; then
  echo "SKIPPED: tests/cluster_netns.rs::$netns_test (network namespaces cannot be made: run as root with iproute2)" >&2
fi
