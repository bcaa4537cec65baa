#!/usr/bin/env bash
# Runs the bits-server fuzz targets one after the other, single job each.
#
#   crates/bits-server/fuzz/run.sh [SECONDS_PER_TARGET]   (default 60)
#
# A shorthand for scripts/fuzz.sh, which runs the fuzz targets of every crate (see there).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec "$here/../../../scripts/fuzz.sh" "${1:-60}" resolve_path download_plan notification_url basic_auth spnego ap_req
