#!/usr/bin/env bash
# Builds the Debian packages (cargo deb), installs them on this machine with dpkg, checks the
# installed config as the bitsd user, serves from the installed paths, uploads a file with the
# installed `bits`, and purges both packages again (also when a step fails). Needs root and dpkg;
# run by .ci/run after the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ] || ! command -v dpkg >/dev/null 2>&1; then
  echo "test-deb: needs root and dpkg (Debian/Ubuntu)" >&2
  exit 1
fi
command -v cargo-deb >/dev/null || cargo install cargo-deb --locked
# Installs over a machine's own bitsd would be lost on purge: refuse instead of touching it.
if dpkg -s bitsd >/dev/null 2>&1 && [ -z "${BITSD_DEB_TEST_REPLACE:-}" ]; then
  echo "test-deb: a bitsd package is installed already; set BITSD_DEB_TEST_REPLACE=1 to let this test purge it" >&2
  exit 1
fi

cargo deb -p bitsd --strip --no-dbgsym
cargo deb -p bits-client --strip --no-dbgsym
server_deb=$(ls -t target/debian/bitsd_*.deb | head -1)
client_deb=$(ls -t target/debian/bits-client_*.deb | head -1)

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
test ! -e /var/lib/bitsd/spool
echo "test-deb: ok (installed, checked, served, uploaded, purged)"
