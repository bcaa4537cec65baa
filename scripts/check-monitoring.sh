#!/usr/bin/env bash
# Checks what packaging/ ships for monitoring: the Prometheus alert rules (`promtool check
# rules`, and `promtool test rules` on their unit tests), the Grafana dashboard (valid JSON, every
# query parsed by promtool), and that every bitsd_* metric either names is one bitsd exports
# (documented in docs/operations.md's metrics table). Installs Debian's prometheus package (for
# promtool) when it is missing. Run by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v promtool >/dev/null 2>&1; then
  echo "check-monitoring: installing promtool (Debian package prometheus)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
(cd packaging/prometheus && promtool check rules bitsd-alerts.yml && promtool test rules bitsd-alerts.test.yml)
python3 - <<'PY'
import json, re, subprocess, sys, tempfile
dash = json.load(open("packaging/grafana/bitsd-dashboard.json"))
documented = set(re.findall(r"`(bitsd_[a-z_]+)`", open("docs/operations.md").read()))
exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
rules = open("packaging/prometheus/bitsd-alerts.yml").read()
problems = []
for name in sorted(set(re.findall(r"\b(bitsd_[a-z_]+)", " ".join(exprs) + rules))):
    base = re.sub(r"_(bucket|sum|count)$", "", name)
    if name not in documented and base not in documented:
        problems.append(f"{name}: not a documented bitsd metric (docs/operations.md)")
# Every dashboard query through promtool's parser, as recording rules (Grafana's variables
# become plain label values).
with tempfile.NamedTemporaryFile("w", suffix=".yml") as f:
    f.write("groups:\n  - name: dashboard\n    rules:\n")
    for i, e in enumerate(exprs):
        q = e.replace("$job", "bitsd").replace("$instance", ".*")
        f.write(f"      - record: dashboard_query_{i}\n        expr: {json.dumps(q)}\n")
    f.flush()
    r = subprocess.run(["promtool", "check", "rules", f.name], capture_output=True, text=True)
    if r.returncode != 0:
        problems.append("dashboard queries: " + r.stdout + r.stderr)
if problems:
    print("\n".join(problems))
    sys.exit(1)
print(f"check-monitoring: dashboard ok ({len(dash['panels'])} panels, {len(exprs)} queries parsed)")
PY
