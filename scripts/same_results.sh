#!/bin/bash
# usage: scripts/same_results.sh COMMIT OUTDIR
# Fixed-seed runs of every command on digits (1 thread) at COMMIT, and the dry run of every config;
# writes OUTDIR/summary.json (accuracies, bits, size, plan per run) and OUTDIR/dry.txt. Two commits
# behave the same when `cmp A/summary.json B/summary.json` holds (refactors must keep it).
set -e
commit=$1; out=$(realpath -m "$2"); rm -rf $out; mkdir -p $out/src
git -C "$(dirname "$0")/.." archive $commit | tar -x -C $out/src
cd $out
L() { sub=$1; shift; env PYTHONPATH=$out/src/src python -m lowbit $sub --quiet "$@"; }
C="--dataset digits --seed 0 --threads 1"
L train --model lenet5 $C --epochs 3 --out r/float
L train --model lenet5 $C --epochs 2 --quantizer pact --wbits 2 --abits 2 --init r/float --out r/pact
L train --model lenet5 $C --epochs 2 --quantizer lsq --wbits 3 --sinreq 0.1 --out r/lsq_sinreq
L train --model lenet5 $C --epochs 2 --quantizer dorefa --wbits 2 --val-fraction 0.2 --out r/dorefa_val
L waveq --model lenet5 $C --quantizer lsq --budget 5 --epochs 2 --finetune-epochs 1 --init r/float --out r/waveq
L dcq --teacher r/float $C --quantizer twn --wbits 1 --sections 2 --epochs 1 --finetune-epochs 1 --out r/dcq
L dcq --model lenet5 $C --quantizer dorefa --wbits 2 --sections 2 --epochs 1 --teacher-epochs 1 --out r/dcq_model
L search --strategy random --model lenet5 $C --init r/float --max-evals 3 --eval-steps 20 --finetune-epochs 1 --out r/random
L search --strategy greedy --model lenet5 $C --float-epochs 1 --max-evals 3 --eval-steps 10 --finetune-epochs 1 --out r/greedy
L releq --model lenet5 $C --init r/float --max-evals 3 --eval-steps 10 --finetune-epochs 1 --out r/releq
(cd $out/src && for c in configs/*/*.yaml; do echo "== $c"; L run $c --dry-run 2>&1 || echo "rc=$?"; done) > dry.txt
python - <<'PY' > summary.json
import json, pathlib
out = {}
for r in sorted(pathlib.Path("r").iterdir()):
    res = json.loads((r / "result.json").read_text())
    plan = (r / "plan.json").read_text() if (r / "plan.json").exists() else None
    keep = {k: res.get(k) for k in ("accuracy", "val_accuracy", "fp_accuracy", "stitched_accuracy", "avg_bits", "weighted_bits", "size_bytes", "weight_bits", "act_bits")}
    out[r.name] = {"result": keep, "plan": plan, "health": res.get("health", {}).get("ok")}
print(json.dumps(out, indent=1, sort_keys=True))
PY
