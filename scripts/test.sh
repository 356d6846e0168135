#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs what is missing, checks formatting and lints,
# runs the unit and integration tests (which start the real daemon on loopback), then runs
# libiscsi's iscsi-test-cu conformance suite against the release build.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v iscsi-test-cu >/dev/null || need_apt+=(libiscsi-bin)
command -v python3 >/dev/null || need_apt+=(python3)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing: ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
rustup component list --installed 2>/dev/null | grep -q rustfmt || rustup component add rustfmt clippy

echo "== cargo fmt --check"; cargo fmt --check
echo "== cargo clippy"; cargo clippy --all-targets -- -D warnings
echo "== cargo build --release"; cargo build --release --bins
echo "== cargo test"; cargo test
echo "== iscsi-test-cu"; scripts/conformance.sh target/release/vvold
