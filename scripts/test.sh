#!/usr/bin/env bash
# Runs the whole test suite, installing whatever the tests need first.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is required (https://rustup.rs)" >&2
  exit 1
fi
cargo test --workspace --all-targets "$@"
