#!/usr/bin/env bash
# Runs every test: installs what is missing (Debian packages for GRUB, Bochs
# and QEMU; the x86_64-unknown-none Rust target), then `cargo test
# --workspace`: the host unit tests of every crate and the system tests in
# tests/tests/, which boot the ISO in Bochs and QEMU. Extra arguments go to
# cargo test (e.g. `tests/run.sh -p mica-tests`).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
./run-qemu.sh --install-deps
exec cargo test --workspace "$@"
