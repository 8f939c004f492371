#!/usr/bin/env bash
# The GPU measurements of docs/benchmarks.md, one part per call, on a machine whose python3 has torch + CUDA.
# Missing packages travel as wheels in .whl/ (diffusers, fastapi, uvicorn, pydantic, ...). Output goes to $OUT.
#   bash sdlab/bench/gpu_session.sh sd15|sdxl|study|serve [tasks]
#   bash sdlab/bench/gpu_session.sh e2e [tasks] [in-process img/s] [batch]
#   bash sdlab/bench/gpu_session.sh starts [batch] [eager starts]   (cold starts: eager (twice by default), compiled cold, a new pod on the shipped cache)
#   bash sdlab/bench/gpu_session.sh train SECONDS [INIT_MODEL]   (the shapes model; see docs/model.md)
#   bash sdlab/bench/gpu_session.sh probe [VAR=VALUE|--flag ...]   (where an eager start and its first image spend their
#       seconds; again under each setting given)
#   bash sdlab/bench/gpu_session.sh eager [rounds]   (eager starts alternating without and with the kernel pre-load)
#   bash sdlab/bench/gpu_session.sh pair "PART ARGS" "PART ARGS"   (two parts at once, one per card; PAIR_TIMEOUT s each)
# MODELS= picks the folder the random-weight models are written to (default /tmp/sdlab-models; under pair, its card0/
# and card1/ subfolders).
# Two parts can share a two-GPU machine, one per card: CUDA_VISIBLE_DEVICES=0 ... train 500 & CUDA_VISIBLE_DEVICES=1 ... study
set -u
OUT=${OUT:-/tmp/sdlab-out}
mkdir -p "$OUT"
if ls .whl*/*.whl >/dev/null 2>&1; then
  # one install for parts started side by side; byte-compiled as an image build would (starts are timed below)
  flock /tmp/sdlab-site.lock sh -c 'test -f /tmp/site/.done || { python3 -m pip install -q --no-index --no-deps --no-compile \
    --no-cache-dir --upgrade --target /tmp/site .whl*/*.whl && { python3 -m compileall -q -j 0 /tmp/site >/dev/null || true; } \
    && touch /tmp/site/.done; }' || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false TORCH_LOGS=recompiles
CACHE=/tmp/sdlab-compile-cache
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,power.limit --format=csv,noheader
python3 -c "import torch, diffusers, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__)"

case "${1:-}" in
  pair)
    # two parts side by side, one per card (e.g. pair "e2e 480 9.11 16" "probe"), each under its own time limit,
    # waited for by PID (a `pgrep -f` loop would also match this command line and never end)
    # each card its own models folder: two parts writing the same model at once would read each other's half-files
    CUDA_VISIBLE_DEVICES=0 MODELS=${MODELS:-/tmp/sdlab-models}/card0 timeout "${PAIR_TIMEOUT:-540}" bash "$0" $2 > "$OUT/gpu0.txt" 2>&1 &
    FIRST=$!
    CUDA_VISIBLE_DEVICES=1 MODELS=${MODELS:-/tmp/sdlab-models}/card1 timeout "${PAIR_TIMEOUT:-540}" bash "$0" $3 > "$OUT/gpu1.txt" 2>&1 &
    SECOND=$!
    wait $FIRST; echo "card 0 ($2): exit $?"
    wait $SECOND; echo "card 1 ($3): exit $?"
    for f in "$OUT/gpu0.txt" "$OUT/gpu1.txt"; do echo "== $f"; grep -v -i "warn\|torchvision\|float" "$f" | tail -30; done
    ;;
  sd15)
    python3 -m sdlab bench runtime --models sd15 ${3:-} --batch-sizes 1,4,8,16 --compiled-batch-sizes ${2:-1,8,16} \
      --compile-cache-dir $CACHE --json "$OUT/sd15.json" 2>&1 | grep --line-buffered -v -i "warn\|torchvision\|kept in float32" | tee "$OUT/sd15.log"
    ;;
  sdxl)
    python3 -m sdlab bench runtime --models sdxl --batch-sizes ${3:-1,4} --compiled-batch-sizes ${2:-1,4} \
      --compile-cache-dir $CACHE --json "$OUT/sdxl.json" 2>&1 | grep --line-buffered -v -i "warn\|torchvision\|kept in float32" | tee "$OUT/sdxl.log"
    ;;
  starts)
    M=${MODELS:-/tmp/sdlab-models}; mkdir -p $M
    python3 -c "from sdlab.bench.models import save_sd15; save_sd15('$M/sd15', device='cuda')" || exit 1
    # eager twice, a compiled start from cold (it ships its cache next to the model), then a new pod on that cache only
    python3 -m sdlab bench coldstart --models-dir $M --model sd15 --timeout 400 --eager-starts ${3:-2} --compiled --batch ${2:-16} \
      --json "$OUT/starts.json" 2>&1 | tee "$OUT/starts.log"
    ls -la $M/sd15/compile-cache
    # where each compiled start's warm-up went (first and second call per bucket, text graphs, dynamo's phases)
    python3 -c "import json; [print(r['start'], json.dumps((r.get('startup') or {}).get('warmup_split'))) for r in json.load(open('$OUT/starts.json'))]"
    ;;
  probe)
    # a fresh process's start split step by step, then the first eager image split by part (text, UNet, VAE, whole)
    M=${MODELS:-/tmp/sdlab-models}; mkdir -p $M
    test -f $M/sd15/model_index.json || python3 -c "from sdlab.bench.models import save_sd15; save_sd15('$M/sd15', device='cuda')" || exit 1
    # then once more under each VAR=VALUE or --flag given (e.g. probe --prewarm CUDA_MODULE_LOADING=EAGER)
    for setting in "" "${@:2}"; do
      echo "== probe ${setting:-(defaults)}"
      case "$setting" in
        --*) python3 -m sdlab.bench.start_probe $M sd15 --generate $setting ;;
        *) env $setting python3 -m sdlab.bench.start_probe $M sd15 --generate ;;
      esac 2>&1 | grep -v -i "warn\|torchvision\|float\|it/s"
    done | tee "$OUT/probe.txt"
    ;;
  eager)
    # eager starts, one process each, alternating with and without the kernel pre-load (ROUNDS times), so that the
    # page cache and the machine's other load fall on both alike; one JSON row per start in eager.jsonl
    M=${MODELS:-/tmp/sdlab-models}; mkdir -p $M
    test -f $M/sd15/model_index.json || python3 -c "from sdlab.bench.models import save_sd15; save_sd15('$M/sd15', device='cuda')" || exit 1
    for round in $(seq ${2:-3}); do
      for flag in --no-prewarm --prewarm; do
        python3 -m sdlab bench coldstart --models-dir $M --model sd15 --timeout 300 --eager-starts 1 \
          --json /tmp/eager-start.json -- $flag > /dev/null 2>&1
        python3 -c "import json; print(json.dumps(json.load(open('/tmp/eager-start.json'))[0]))" | tee -a "$OUT/eager.jsonl"
      done
    done
    ;;
  study)
    # where the UNet's time goes: each attention backend alone and in the UNet, then SD1.5 at bf16 on every side:
    # plain diffusers, diffusers + torch.compile, and the runtime (with a kernel profile of its UNet)
    python3 -m sdlab bench attention --json "$OUT/attention.json" 2>&1 | grep --line-buffered -v -i "warn\|torchvision" | tee "$OUT/study.log"
    python3 -m sdlab bench runtime --models sd15 --batch-sizes ${2:-1,16} --compiled-batch-sizes ${2:-1,16} \
      --extra ${3:-dcompiled@1/16} --compile-cache-dir $CACHE --json "$OUT/sd15.json" 2>&1 \
      | grep --line-buffered -v -i "warn\|torchvision\|kept in float32" | tee -a "$OUT/study.log"
    ;;
  train)
    # the shapes model: train (or continue from INIT_MODEL) for SECONDS, export, judge 200 held-out captions
    INIT=${3:-}
    python3 -m sdlab model train --out /tmp/shapes-train ${INIT:+--init-from "$INIT"} --steps 100000 \
      --time-budget "${2:-500}" --export-partial --export-to /tmp/shapes-model > "$OUT/train.log" 2>&1
    grep -v -i "warn\|torchvision" "$OUT/train.log" | tail -25
    tar -C /tmp -cf "$OUT/shapes-model.tar" shapes-model
    python3 -m sdlab model eval --model /tmp/shapes-model --n 200 --device cuda --sheet "$OUT/eval-sheet.png" 2>&1 \
      | grep -v -i "warn\|torchvision" | tee "$OUT/eval.txt"
    ;;
  serve)
    # cold start (no compile), then the compiled server: cold compile, an HTTP burst, a restart on the warm cache
    M=${MODELS:-/tmp/sdlab-models}; mkdir -p $M
    python3 -c "from sdlab.bench.models import save_sd15; save_sd15('$M/sd15', device='cuda')" || exit 1
    du -sh $M/sd15
    python3 -m sdlab bench coldstart --models-dir $M --model sd15 --timeout 300 --eager-starts 2 | tee "$OUT/coldstart-eager.json"
    python3 -m sdlab.runtime --models-dir $M --model sd15 --port 7861 --opt fast --max-batch 8 --batch-buckets 1,8 \
      --compile-cache-dir $CACHE --max-batch-wait-ms 30 > "$OUT/serve.log" 2>&1 &
    PID=$!
    python3 - <<'PY' | tee "$OUT/serve-ready.txt"
import time, httpx
t0 = time.time()
while time.time() - t0 < 420:
    try:
        if httpx.get("http://127.0.0.1:7861/healthz", timeout=2).status_code == 200:
            break
    except httpx.HTTPError:
        pass
    time.sleep(0.5)
print(f"compiled server (cold compile cache) healthy {time.time() - t0:.1f} s after launch")
PY
    python3 -m sdlab bench http --url http://127.0.0.1:7861 --tasks ${2:-200} --per-request 4 --concurrency 8 | tee "$OUT/http.json"
    python3 -m sdlab bench http --url http://127.0.0.1:7861 --tasks 16 --per-request 1 --concurrency 1 | tee -a "$OUT/http.json"
    kill $PID; wait $PID
    python3 -m sdlab bench coldstart --models-dir $M --model sd15 --timeout 300 -- --opt fast --max-batch 8 --batch-buckets 1,8 \
      --compile-cache-dir $CACHE | tee "$OUT/coldstart-compiled-warm-cache.json"
    tail -5 "$OUT/serve.log"
    ;;
  e2e)
    # the whole local stack (moto, gateway, agent, the compiled runtime) with full-size SD1.5, a backlog via the API;
    # buckets 1 and the batch: a task that arrives alone (the first of a burst) runs at batch 1, not padded to the batch
    M=${MODELS:-/tmp/sdlab-models}; mkdir -p $M
    python3 -c "from sdlab.bench.models import save_sd15; save_sd15('$M/sd15', device='cuda')" || exit 1
    cat > /tmp/e2e.yaml <<YAML
version: 1
stack: {name: gpubench}
runtimes:
  - name: sd15
    type: diffusers
    model: {name: sd15, source: path, path: $M/sd15}
    batch: {max_batch: ${4:-8}, max_wait_ms: 30, buckets: [1, ${4:-8}]}
    optimize: fast
YAML
    # its own time limit (E2E_TIMEOUT s), so the logs below are written even when it overruns; output lands in $OUT as
    # it comes, never only in a pipe that a killed call would lose
    date -u +"e2e starts %T" > "$OUT/e2e.log"
    timeout ${E2E_TIMEOUT:-480} python3 -m sdlab bench e2e --config /tmp/e2e.yaml --tasks ${2:-200} --steps 25 --size 512 \
      --reference ${3:-8.88} --home /tmp/e2e-home --json "$OUT/e2e.json" >> "$OUT/e2e.log" 2>&1
    echo "e2e exit $?"; grep -v -i "warn\|torchvision\|kept in float32" "$OUT/e2e.log" | tail -60
    for f in /tmp/e2e-home/logs/*.log; do echo "== $f"; grep -v "/healthz" "$f" | head -40; echo "== ... end:"; tail -8 "$f"; done \
      > "$OUT/e2e-logs.txt"
    ;;
  *) echo "usage: $0 sd15|sdxl|study|train|serve|e2e|starts|probe|eager|pair"; exit 2 ;;
esac
