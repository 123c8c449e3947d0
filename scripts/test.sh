#!/usr/bin/env bash
# The whole test suite: unit, integration and doc tests of every crate in the workspace.
# Ends with one summary line, "N passed, N failed, N skipped", over all test binaries, and the
# list of skipped tests (a test skips when a dependency such as a wgpu adapter is missing).
# Under CI (CI=true) a test that would skip fails instead (tests/integration/main.rs `skip`).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/bitnet-qat-target}"
scripts/install-deps.sh
# Mesa warns on every wgpu call without a runtime directory.
if [ -z "${XDG_RUNTIME_DIR:-}" ]; then
    export XDG_RUNTIME_DIR="${TMPDIR:-/tmp}/bitnet-qat-xdg-$(id -u)"
    mkdir -p -m 700 "$XDG_RUNTIME_DIR"
fi
log=$(mktemp)
export BITNET_QAT_SKIPPED
BITNET_QAT_SKIPPED=$(mktemp)
trap 'rm -f "$log" "$BITNET_QAT_SKIPPED"' EXIT
status=0
cargo test --workspace "$@" 2>&1 | tee "$log" || status=$?
passed=$(grep -oE 'test result: [a-zA-Z]+\. [0-9]+ passed' "$log" | awk '{s += $4} END {print s + 0}')
failed=$(grep -oE '; [0-9]+ failed' "$log" | awk '{s += $2} END {print s + 0}')
skipped=$(sort -u "$BITNET_QAT_SKIPPED" | grep -c . || true)
echo
echo "tests: $passed passed, $failed failed, $skipped skipped"
if [ "$skipped" -gt 0 ]; then
    echo "skipped (counted as passed by cargo):"
    sort -u "$BITNET_QAT_SKIPPED" | sed 's/^/  /'
fi
exit "$status"
