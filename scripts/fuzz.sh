#!/usr/bin/env bash
# Runs every cargo-fuzz target of the workspace one after the other, single job each.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]   (default 60 s; default all targets)
#
# Fuzz projects: crates/bits-proto/fuzz (parse_headers, classify, ntlm) and crates/bits-server/fuzz
# (resolve_path, download_plan, notification_url, basic_auth, spnego, ap_req). Naming targets runs
# only those.
#
# cargo-fuzz needs nightly-only rustc flags (-Zsanitizer, coverage instrumentation); with only a
# stable toolchain, RUSTC_BOOTSTRAP=1 unlocks them. Corpora grow under <crate>/fuzz/corpus/<target>
# (seeded from <crate>/fuzz/seeds/<target>, with <crate>/fuzz/<target>.dict); crashes land in
# <crate>/fuzz/artifacts/<target>. Corpus and artifacts are gitignored. libFuzzer's last line per
# target, "Done N runs in S second(s)", gives the number of executions.
set -euo pipefail

secs="${1:-60}"
case "$secs" in
  '' | *[!0-9]*) echo "usage: $0 [seconds per target] [target...]" >&2; exit 2 ;;
esac
shift || true

# crate:target:max_len. 8 KiB inputs let classify reach the 4096-byte header value limit;
# 4 KiB paths hold 255-byte segments fully percent-encoded and reach the 2048-byte path limit.
# Negotiate tokens: 4 KiB holds the seed curl/MIT AP-REQ (736 bytes) several times over and any
# NTLM message inside SPNEGO.
all=(
  bits-proto:parse_headers:8192
  bits-proto:classify:8192
  bits-proto:ntlm:4096
  bits-server:resolve_path:4096
  bits-server:download_plan:4096
  bits-server:notification_url:4096
  bits-server:basic_auth:8192
  bits-server:spnego:4096
  bits-server:ap_req:4096
)

selected=()
if [ "$#" -eq 0 ]; then
  selected=("${all[@]}")
else
  for want in "$@"; do
    found=
    for entry in "${all[@]}"; do
      IFS=: read -r _ target _ <<<"$entry"
      if [ "$target" = "$want" ]; then
        selected+=("$entry")
        found=1
      fi
    done
    if [ -z "$found" ]; then
      echo "unknown fuzz target: $want" >&2
      exit 2
    fi
  done
fi

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked
fi

export RUSTC_BOOTSTRAP=1
status=0
for entry in "${selected[@]}"; do
  IFS=: read -r crate target max_len <<<"$entry"
  cd "$root/crates/$crate"
  corpus="fuzz/corpus/$target"
  mkdir -p "$corpus"
  dirs=("$corpus")
  [ -d "fuzz/seeds/$target" ] && dirs+=("fuzz/seeds/$target")
  flags=(-max_total_time="$secs" -max_len="$max_len")
  [ -f "fuzz/$target.dict" ] && flags+=(-dict="fuzz/$target.dict")
  echo "== $crate/$target for ${secs}s" >&2
  if ! cargo fuzz run "$target" "${dirs[@]}" -- "${flags[@]}"; then
    echo "== $crate/$target FAILED: see crates/$crate/fuzz/artifacts/$target" >&2
    status=1
  fi
done
exit "$status"
