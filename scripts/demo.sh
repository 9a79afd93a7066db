#!/usr/bin/env bash
# Set up, then run the whole story on the embedded digits data: train a model, honour a deletion
# request for 25 samples and one for a whole class with signed proofs, verify both as an
# independent auditor, run membership inference, and write signed audit reports.
# Each step's wall time is printed at the end (and written to $DEMO_TIMES when set, one
# "seconds<TAB>step" line each), setup included: that is where the demo's time budget is checked.
set -euo pipefail
cd "$(dirname "$0")/.."
# Let Python keep its byte-code caches: the installs skip compiling (--no-compile) on the
# understanding that the first import of each module writes its cache; with
# PYTHONDONTWRITEBYTECODE set every process (the CLI, sandbox workers, cluster workers) would
# recompile torch's modules from source, about 4.5 s per process start on this machine.
unset PYTHONDONTWRITEBYTECODE

times=()
t_step=$(date +%s%N)
label="setup (venv, torch, project)"
step() {
  local now
  now=$(date +%s%N)
  local ds=$(((now - t_step) / 100000000))
  times+=("$(printf '%5d.%d\t%s' $((ds / 10)) $((ds % 10)) "$label")")
  t_step=$now
  label="$*"
  [ "$*" = done ] || printf '\n== %s\n' "$*"
}

./scripts/setup.sh
. .venv/bin/activate
# Every model here is tiny: torch's intra-op threads cost more in synchronisation than they save,
# and on a busy machine they spin (measured: `prune train` 158 s with 2 threads, 1.9 s with 1).
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1

W=${DEMO_DIR:-work/demo}
R=${DEMO_REPORTS:-reports}
rm -rf "$W" "$R/demo-samples" "$R/demo-class"
mkdir -p "$W" "$R"

step "owner: train a ReLU MLP on digits (seeded) and export it to ONNX"
prune train --dataset digits --out "$W/work" --quiet
step "owner and auditor: create signing keys"
prune keygen --out "$W/keys" --no-passphrase
audit keygen --out "$W/auditor"
step "owner: deletion request 1, 25 individual samples (random, seeded)"
python - "$W" <<'PY'
import sys, numpy as np
n = len(np.load(f"{sys.argv[1]}/work/train.npz")["y"])
idx = np.random.default_rng(2026).choice(n, size=25, replace=False)
open(f"{sys.argv[1]}/forget.txt", "w").write("\n".join(map(str, idx)) + "\n")
PY
prune unlearn "$W/work/model.onnx" --train "$W/work/train.npz" --test "$W/work/test.npz" \
  --forget-indices "$W/forget.txt" --key "$W/keys/owner.key" --out "$W/proof-samples" --quiet
step "owner: deletion request 2, the whole class 3"
prune unlearn "$W/work/model.onnx" --train "$W/work/train.npz" --test "$W/work/test.npz" \
  --forget-class 3 --key "$W/keys/owner.key" --out "$W/proof-class" --quiet

for kind in samples class; do
  P="$W/proof-$kind"
  step "auditor: verify the $kind proof (signatures, commitments, replay, regions, structure, locality)"
  audit verify "$P" --public-key "$W/keys/owner.pub" --original "$W/work/model.onnx" \
    --forget "$P/forget.npz" --reference "$W/work/test.npz" --json "$W/verify-$kind.json"
  step "auditor: membership inference + signed report for the $kind proof"
  audit report "$P" --public-key "$W/keys/owner.pub" --original "$W/work/model.onnx" \
    --forget "$P/forget.npz" --reference "$W/work/test.npz" --auditor-key "$W/auditor/auditor.key" \
    --out "$R/demo-$kind" --quiet
  audit attestation "$R/demo-$kind/attestation.json" --auditor-public-key "$W/auditor/auditor.pub" \
    --report "$R/demo-$kind/report.json" --model "$P/model.onnx"
done

step done
printf '\n== time per step (s)\n'
printf '%s\n' "${times[@]}"
[ -z "${DEMO_TIMES:-}" ] || printf '%s\n' "${times[@]}" >"$DEMO_TIMES"
echo "reports: $R/demo-samples/report.html and $R/demo-class/report.html"
