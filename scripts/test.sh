#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs what is missing, checks formatting and lints,
# runs the unit and integration tests (which start the real daemon on loopback), then runs
# libiscsi's iscsi-test-cu conformance suite against the release build, and last the Linux
# kernel's initiator in a QEMU guest (scripts/kernel-initiator.sh; KERNEL_INITIATOR=0 skips it).
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/lib/procs.sh
source scripts/lib/procs.sh
need_apt=()
command -v iscsi-test-cu >/dev/null || need_apt+=(libiscsi-bin)
command -v python3 >/dev/null || need_apt+=(python3)
apt_install "${need_apt[@]}"
rustup component list --installed 2>/dev/null | grep -q rustfmt || rustup component add rustfmt clippy

echo "== cargo fmt --check"; cargo fmt --check
echo "== cargo clippy"; cargo clippy --all-targets -- -D warnings
echo "== cargo build --release"; cargo build --release --bins
echo "== cargo test"; cargo test
echo "== iscsi-test-cu"; scripts/conformance.sh target/release/vvold
if [ "${KERNEL_INITIATOR:-1}" = 1 ]; then
  echo "== Linux kernel initiator"; SKIP_BUILD=1 scripts/kernel-initiator.sh
fi
