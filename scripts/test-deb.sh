#!/usr/bin/env bash
# Builds the Debian packages (scripts/deb.sh), runs lintian on them (errors fail), installs them
# on this machine with dpkg, checks the installed config as the bitsd user, the man pages and the
# bash completions, serves from the installed paths, uploads a file with the installed `bits`,
# and purges both packages again (also when a step fails). Needs root and dpkg; run by .ci/run
# after the test suite. Installs lintian and man-db with apt-get when they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ] || ! command -v dpkg >/dev/null 2>&1; then
  echo "test-deb: needs root and dpkg (Debian/Ubuntu)" >&2
  exit 1
fi
if ! command -v lintian >/dev/null 2>&1 || ! command -v man >/dev/null 2>&1; then
  echo "test-deb: installing lintian and man-db" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends lintian man-db >/dev/null
fi
# Installs over a machine's own bitsd would be lost on purge: refuse instead of touching it.
if dpkg -s bitsd >/dev/null 2>&1 && [ -z "${BITSD_DEB_TEST_REPLACE:-}" ]; then
  echo "test-deb: a bitsd package is installed already; set BITSD_DEB_TEST_REPLACE=1 to let this test purge it" >&2
  exit 1
fi

debs=$(./scripts/deb.sh --no-dbgsym | tail -2)
server_deb=$(echo "$debs" | head -1)
client_deb=$(echo "$debs" | tail -1)
# Errors fail; warnings are shown (the intended ones are overridden, with their reasons, in
# packaging/debian/*.lintian-overrides). lintian warns when run as root, which this script is.
lintian --fail-on error --tag-display-limit 0 "$server_deb" "$client_deb" 2> >(grep -v 'root privileges' >&2)
echo "test-deb: lintian found no errors"

work=$(mktemp -d)
server_pid=""
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null || true
  dpkg --purge bitsd bits-client >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

dpkg -i "$server_deb" "$client_deb"
echo "test-deb: installed $(basename "$server_deb") and $(basename "$client_deb")"
test "$(stat -c '%U:%G %a' /etc/bitsd/bitsd.toml)" = "root:bitsd 640"
test "$(stat -c '%U:%G %a' /var/lib/bitsd/uploads)" = "bitsd:bitsd 750"
test -f /usr/lib/systemd/system/bitsd.service
grep -q '^ExecStart=/usr/bin/bitsd serve --config /etc/bitsd/bitsd.toml$' /usr/lib/systemd/system/bitsd.service
runuser -u bitsd -- /usr/bin/bitsd check-config --config /etc/bitsd/bitsd.toml
test -f /usr/share/doc/bitsd/changelog.Debian.gz && test -f /usr/share/doc/bits-client/copyright
# The man pages render, and the bash completions load and complete.
MANWIDTH=80 man bitsd 2>/dev/null | grep -q 'bitsd - BITS upload server'
MANWIDTH=80 man bitsd-check-config 2>/dev/null | grep -q -- '--config'
MANWIDTH=80 man bits 2>/dev/null | grep -q 'bits - BITS Upload Protocol client'
test -f /usr/share/zsh/vendor-completions/_bitsd && test -f /usr/share/fish/vendor_completions.d/bits.fish
completes() { # completes COMMAND WORD: what bash completion offers for `COMMAND WORD<TAB>`
  bash -c 'source "/usr/share/bash-completion/completions/$1" &&
    COMP_WORDS=("$1" "$2") COMP_CWORD=1 COMP_LINE="$1 $2" COMP_POINT=${#COMP_LINE} &&
    "$(complete -p "$1" | sed -n "s/.*-F \([^ ]*\) .*/\1/p")" "$1" "$2" "$1" && echo "${COMPREPLY[*]}"' _ "$1" "$2"
}
completes bitsd che | grep -qw check-config
completes bits upl | grep -qw upload-reply

# Serve as the unit would (user bitsd, the installed config), on a free loopback port.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
runuser -u bitsd -- /usr/bin/bitsd serve --config /etc/bitsd/bitsd.toml --listen "127.0.0.1:$port" \
  > "$work/bitsd.log" 2>&1 &
server_pid=$!
for _ in $(seq 100); do
  grep -q "bitsd ready" "$work/bitsd.log" && break
  sleep 0.1
done
grep -q "bitsd ready" "$work/bitsd.log" || { cat "$work/bitsd.log" >&2; exit 1; }

head -c 3000000 /dev/urandom > "$work/report.bin"
BITS_STATE_DIR="$work/jobs" /usr/bin/bits upload --fragment-size 1M "$work/report.bin" \
  "http://127.0.0.1:$port/upload/deb-test-report.bin"
cmp "$work/report.bin" /var/lib/bitsd/uploads/deb-test-report.bin
test "$(stat -c '%U' /var/lib/bitsd/uploads/deb-test-report.bin)" = bitsd
kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; server_pid=""
rm -f /var/lib/bitsd/uploads/deb-test-report.bin

dpkg --purge bitsd bits-client
test ! -e /usr/bin/bitsd && test ! -e /usr/bin/bits && test ! -e /etc/bitsd/bitsd.toml
test ! -e /usr/share/man/man8/bitsd.8.gz && test ! -e /usr/share/bash-completion/completions/bits
test ! -e /var/lib/bitsd/spool
echo "test-deb: ok (installed, checked, served, uploaded, purged)"
