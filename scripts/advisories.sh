#!/usr/bin/env bash
# `cargo deny check advisories` against the RustSec database snapshot in ../shared/advisory-db
# (relative to the repository): this project's machines cannot fetch the database, so the
# snapshot's git bundle is cloned into a temporary directory and cargo-deny runs offline.
# No snapshot: a skip message and exit 0 (nothing was checked, and the message says so).
# BITSD_ADVISORY_DB overrides where the snapshot directory is.
set -euo pipefail
cd "$(dirname "$0")/.."
snapshot=${BITSD_ADVISORY_DB:-../shared/advisory-db}
bundle="$snapshot/advisory-db.bundle"
if [ ! -f "$bundle" ]; then
  echo "advisories: SKIPPED, no advisory database snapshot at $bundle (see docs/decisions.md, \"Advisories\")" >&2
  exit 0
fi
command -v cargo-deny >/dev/null || cargo install cargo-deny --locked
db=$(mktemp -d)
trap 'rm -rf "$db"' EXIT
# cargo-deny looks for the default database under this name (derived from its URL); under any
# other name it tries to clone from the network.
git -c init.defaultBranch=main clone -q -b main "$bundle" "$db/advisory-db-3157b0e258782691"
# --offline below needs every platform's crates on disk, not just this one's.
cargo fetch --locked -q
# deny.toml stays the one policy; only the copy learns where the database is.
sed "/^\[advisories\]/a db-path = \"$db\"" deny.toml > "$db/deny.toml"
grep -q '^db-path' "$db/deny.toml" || { echo "advisories: deny.toml has no [advisories] table" >&2; exit 1; }
echo "advisories: database of $(git -C "$db/advisory-db-3157b0e258782691" log -1 --format=%cs) from $snapshot" >&2
cargo deny --offline --config "$db/deny.toml" check advisories
