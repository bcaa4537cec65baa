#!/usr/bin/env bash
# Runs the bits-proto fuzz targets one after the other, single job each.
#
#   crates/bits-proto/fuzz/run.sh [SECONDS_PER_TARGET]   (default 60)
#
# cargo-fuzz needs nightly-only rustc flags (-Zsanitizer, coverage instrumentation); with only a
# stable toolchain, RUSTC_BOOTSTRAP=1 unlocks them. Corpora grow under fuzz/corpus/<target>
# (seeded from fuzz/seeds/<target>, with fuzz/<target>.dict); crashes land in
# fuzz/artifacts/<target>. Corpus and artifacts are gitignored.
set -euo pipefail

secs="${1:-60}"
case "$secs" in
  '' | *[!0-9]*) echo "usage: $0 [seconds per target]" >&2; exit 2 ;;
esac

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
crate="$(dirname "$here")"

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked
fi

export RUSTC_BOOTSTRAP=1
cd "$crate"
status=0
for target in parse_headers classify; do
  corpus="fuzz/corpus/$target"
  mkdir -p "$corpus"
  dirs=("$corpus")
  [ -d "fuzz/seeds/$target" ] && dirs+=("fuzz/seeds/$target")
  # 8 KiB inputs let classify reach the 4096-byte header value limit.
  flags=(-max_total_time="$secs" -max_len=8192 -dict="fuzz/$target.dict")
  echo "== $target for ${secs}s" >&2
  if ! cargo fuzz run "$target" "${dirs[@]}" -- "${flags[@]}"; then
    echo "== $target FAILED: see fuzz/artifacts/$target" >&2
    status=1
  fi
done
exit "$status"
