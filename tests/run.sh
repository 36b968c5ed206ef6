#!/usr/bin/env bash
# Runs every test: installs what is missing (Debian packages for GRUB, Bochs
# and QEMU; the x86_64-unknown-none Rust target), then `cargo test
# --workspace`: the host unit tests of every crate and the system tests in
# tests/tests/, which boot the ISO in Bochs and QEMU. Extra arguments go to
# cargo test (e.g. `tests/run.sh -p mica-tests`); without any, the system
# tests run again on two and on four emulated CPUs (`MICA_CPUS=2`, `=4`). The last
# line sums up every test binary's result: `tests: N passed, N failed, N skipped`.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
./run-qemu.sh --install-deps
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --no-fail-fast "$@" 2>&1 | tee "$log" || status=$?
# The system tests (tests/tests/) once more on an emulated machine with two
# CPUs, and again with four: everything must work whether domains share one
# CPU or run side by side. Skipped when the caller chose a CPU count
# (MICA_CPUS) or arguments.
if [ -z "${MICA_CPUS:-}" ] && [ "$#" -eq 0 ]; then
    for cpus in 2 4; do
        echo "tests: the system tests again with MICA_CPUS=$cpus"
        MICA_CPUS=$cpus cargo test --no-fail-fast -p mica-tests --test '*' 2>&1 | tee -a "$log" || status=$?
    done
fi
# Debian's kernel as a PVH guest (tests/tests/linux.rs, ignored by the plain
# run above): tests/linux.sh gets the images with apt-get, then the test runs.
# Without the images (no network, no apt) it stays counted as skipped, and
# says so: a skip is never a pass.
if [ "$#" -eq 0 ]; then
    if bash "$root/tests/linux.sh" 2>&1 | tee -a "$log"; then
        cargo test -p mica-tests --test linux -- --ignored 2>&1 | tee -a "$log" || status=$?
    else
        echo "tests: LINUX TEST SKIPPED: tests/linux.sh could not get Debian's kernel (see above)" | tee -a "$log"
    fi
fi
# cargo prints one `test result:` line per test binary; add them up.
awk '/^test result:/ {
        for (i = 1; i <= NF; i++) {
            if ($(i + 1) ~ /^passed;?$/) passed += $i
            if ($(i + 1) ~ /^failed;?$/) failed += $i
            if ($(i + 1) ~ /^ignored;?$/) ignored += $i
        }
    }
    END { printf "tests: %d passed, %d failed, %d skipped\n", passed, failed, ignored }' "$log"
exit "$status"
