#!/usr/bin/env bash
# Builds the Debian packages `bitsd` and `bits-client` into target/debian/: the release binaries,
# their man pages and bash/zsh/fish completions (written by the binaries themselves from their
# clap definitions: `bitsd manpages DIR`, `bitsd completions SHELL`, the same for `bits`), then
# `cargo deb` for each package. Installs cargo-deb first when it is missing. Extra arguments go
# to both `cargo deb` calls. scripts/test-deb.sh (run by .ci/run) uses it.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null 2>&1; then
  echo "deb: cargo is required (https://rustup.rs)" >&2
  exit 1
fi
command -v cargo-deb >/dev/null || cargo install cargo-deb --locked
cargo build --release --locked -p bitsd -p bits-client
# Wherever CARGO_TARGET_DIR or a cargo config put it: cargo-deb maps the assets' `target/release/`
# prefix to the same place.
target=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
release="$target/release"
assets="$release/assets"
rm -rf "$assets"
mkdir -p "$assets/man" "$assets/completions"
"$release/bitsd" manpages "$assets/man" >/dev/null
"$release/bits" manpages "$assets/man" >/dev/null
# Debian installs man pages gzipped (-n: no name or time inside, so rebuilds are identical).
gzip -9n "$assets"/man/*
for cmd in bitsd bits; do
  "$release/$cmd" completions bash > "$assets/completions/$cmd.bash"
  "$release/$cmd" completions zsh > "$assets/completions/_$cmd"
  "$release/$cmd" completions fish > "$assets/completions/$cmd.fish"
done
# The Maintainer field: the project's by default; a site that builds and ships its own packages
# puts its own name and address there.
maintainer=()
if [ -n "${BITSD_DEB_MAINTAINER:-}" ]; then
  maintainer=(--maintainer "$BITSD_DEB_MAINTAINER")
fi
cargo deb -p bitsd --no-build --strip "${maintainer[@]}" "$@"
cargo deb -p bits-client --no-build --strip "${maintainer[@]}" "$@"
ls -t "$target"/debian/bitsd_*.deb | head -1
ls -t "$target"/debian/bits-client_*.deb | head -1
