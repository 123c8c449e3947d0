#!/usr/bin/env bash
# The whole test suite: unit, integration and doc tests of every crate in the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/bitnet-qat-target}"
cargo test --workspace "$@"
