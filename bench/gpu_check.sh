#!/usr/bin/env bash
# Issue 13's GPU check, one command on a CUDA machine (about 5-8 minutes on one H100):
#
#     OUT=/path/to/results PY=.venv/bin/python bash bench/gpu_check.sh
#
# 1. the device tests and the attribution unit tests (CUDA tests run instead of being skipped);
# 2. bench/attribution.py --device cuda: knowledge-neurons vs ig on the GPT-2-small and GPT-2-XL shapes
#    (per prompt, batch of 64 / 32), the trained-model score check, SmolLM2 facts/hour old vs packed
#    engine, bf16/TF32 agreement with float32.
# Everything lands in $OUT (default ./gpu-results): env.txt, nvidia-smi.txt, tests.txt, bench.txt.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-results}
PY=${PY:-python}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
"$PY" -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'transformers', transformers.__version__, torch.cuda.get_device_name())" > "$OUT/env.txt" 2>&1
timeout 150 "$PY" -m pytest -q -x -p no:cacheprovider tests/test_devices.py tests/test_attribution.py \
    > "$OUT/tests.txt" 2>&1
echo "tests exit $?" >> "$OUT/tests.txt"
timeout 330 "$PY" bench/attribution.py --device cuda --xl --kn-prompts 3 --batch 64 --xl-batch 32 \
    --facts 32 --threads 8 > "$OUT/bench.txt" 2>&1
echo "bench exit $?" >> "$OUT/bench.txt"
tail -n 4 "$OUT/tests.txt" "$OUT/bench.txt"
