#!/usr/bin/env bash
# The GPU check: one call of the device tool runs minivae's CuPy path end to end on a lent GPU
# machine (the suite's CuPy tests, the gradient checks, one epoch of each seed model with plot
# and evaluate, `minivae bench` and the PyTorch-CUDA comparison) and brings back every log.
#
# 1. Here, once per checkout: copy the eight .gz files the two seed models train on (MNIST and
#    FashionMNIST, train and test; 42.3 MB, 40 MiB) from ../shared/data into gpu-data/, which git
#    ignores and the device call carries (the machine has no network):
#        bash benchmarks/gpu_check.sh --prepare [SOURCE_DIR]      # default ../shared/data
# 2. The device call (the machine's python3 has CuPy, PyTorch with CUDA, pytest; minivae runs
#    from the checkout with PYTHONPATH=.):
#        run(command="bash benchmarks/gpu_check.sh", carry=["gpu-data"], timeout_s=540)
# Also:
#        bash benchmarks/gpu_check.sh --dry-run           # the steps, their time caps, commands
#        bash benchmarks/gpu_check.sh --only gradcheck,gpu-bench   # steps whose names start so
#
# Each step runs under `timeout` with its own cap, and never past the whole check's budget
# (GPU_CHECK_BUDGET_S, default 450 s), so the check ends in under 8 minutes; a step that fails
# is recorded and the next one runs (plot and evaluate need their training run). What comes back
# under $OUT (default output/gpu-check; the device tool returns at most 8 files):
#   summary.txt       one line per step: PASS, FAIL (exit status), TIMEOUT or SKIP, and seconds
#   gpu-check.tar.gz  gpu-check/<step>.log for every step, pytest-cupy.xml, gpu_bench.json, and
#                     runs/<model>-<dataset>/ (pictures, metrics.csv, config.json; no checkpoints)
# Both are rewritten after every step, so a check cut short still returns what it did. The exit
# status is 0 when every step that ran passed. PYTHON overrides the interpreter (python3).
set -u

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-python3}
BUDGET_S=${GPU_CHECK_BUDGET_S:-450}
RESERVE_S=15                          # kept back for packing what came out
DATASETS=(mnist fashion-mnist)
FILES=(train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz
       t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz)
MAX_DATA_BYTES=$((60 * 1024 * 1024))  # the device call carries 64 MiB with the checkout

die() { echo "gpu_check.sh: error: $*" >&2; exit 2; }

# -- step 1: the data folder that travels with the device call ---------------------------------
prepare() {
    local src=${1:-$ROOT/../shared/data} dest=$ROOT/gpu-data ds f total=0
    for ds in "${DATASETS[@]}"; do
        for f in "${FILES[@]}"; do
            [ -f "$src/$ds/$f" ] || die "$src/$ds/$f not found" \
                "(give the folder that holds mnist/ and fashion-mnist/)"
        done
    done
    for ds in "${DATASETS[@]}"; do
        mkdir -p "$dest/$ds" || die "cannot create $dest/$ds"
        for f in "${FILES[@]}"; do
            rm -f "$dest/$ds/.$f.part"
            cp "$src/$ds/$f" "$dest/$ds/.$f.part" && chmod 644 "$dest/$ds/.$f.part" \
                && mv -f "$dest/$ds/.$f.part" "$dest/$ds/$f" || die "cannot copy $src/$ds/$f"
            total=$((total + $(stat -c %s "$dest/$ds/$f")))
        done
    done
    ls -l "$dest"/*/
    echo "gpu-data: $total bytes ($((total / 1048576)) MiB) in $dest"
    [ "$total" -le "$MAX_DATA_BYTES" ] || die "gpu-data is over $MAX_DATA_BYTES bytes"
}

# -- the command line ------------------------------------------------------------------------
DRY=false ONLY=""
while [ $# -gt 0 ]; do
    case $1 in
        --prepare) shift; prepare "$@"; exit $? ;;
        --dry-run) DRY=true ;;
        --only) [ $# -ge 2 ] || die "--only needs a comma-separated list of step names"
                ONLY=$2; shift ;;
        -h|--help) sed -n '2,/^set -u/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
    shift
done

cd "$ROOT" || die "cannot enter $ROOT"
START=$(date +%s)
DEADLINE=$((START + BUDGET_S))
OUT=${OUT:-$ROOT/output/gpu-check}
if $DRY; then
    SCRATCH=${TMPDIR:-/tmp}/tmp.XXXXXXXXXX       # shown only: a real run makes it with mktemp
else
    SCRATCH=$(mktemp -d) || die "mktemp failed"
    trap 'rm -rf "$SCRATCH"' EXIT
fi
WORK=$SCRATCH/gpu-check               # packed into $OUT/gpu-check.tar.gz
RUNS=$WORK/runs
DATA=$SCRATCH/data                    # the download cache the training runs fill from gpu-data/
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 MPLBACKEND=Agg
export MINIVAE_DATA=$DATA MINIVAE_MIRROR=$ROOT/gpu-data
declare -A STATUS
FAILED=0

selected() {
    local prefix
    [ -z "$ONLY" ] && return 0
    for prefix in ${ONLY//,/ }; do
        [[ $1 == "$prefix"* ]] && return 0
    done
    return 1
}

record() {                            # record NAME VERDICT SECONDS DETAIL
    STATUS[$1]=$2
    printf '%-24s %-8s %7s s  %s\n' "$1" "$2" "$3" "$4" | tee -a "$WORK/summary.txt"
}

pack() {
    cp "$WORK/summary.txt" "$OUT/summary.txt"
    tar -czf "$OUT/.gpu-check.tar.gz" --exclude=checkpoints --exclude='*.npz' \
        -C "$SCRATCH" gpu-check && mv -f "$OUT/.gpu-check.tar.gz" "$OUT/gpu-check.tar.gz"
}

# step NAME CAP_S COMMAND [NEEDS]: run COMMAND (bash) for at most CAP_S seconds, within the
# budget; NEEDS names a step (or 'gpu-data') that must have passed first.
step() {
    local name=$1 cap=$2 cmd=$3 needs=${4:-} left limit t0 rc tenths verdict
    selected "$name" || return 0
    if $DRY; then
        printf '%-24s %4s s  %s\n' "$name" "$cap" "$cmd"
        return 0
    fi
    if [ -n "$needs" ] && [ "${STATUS[$needs]:-}" != PASS ]; then
        record "$name" SKIP - "needs $needs, which did not pass"
        pack
        return 0
    fi
    left=$((DEADLINE - $(date +%s) - RESERVE_S))
    if [ "$left" -lt 10 ]; then
        record "$name" SKIP - "no time left in the ${BUDGET_S} s budget"
        pack
        return 0
    fi
    limit=$((cap < left ? cap : left))
    echo "== $name (at most $limit s): $cmd" >"$WORK/$name.log"
    t0=$(date +%s%N)
    timeout --kill-after=10 "$limit" bash -c "$cmd" >>"$WORK/$name.log" 2>&1 </dev/null
    rc=$?
    tenths=$((($(date +%s%N) - t0) / 100000000))
    echo "== exit status $rc" >>"$WORK/$name.log"
    case $rc in
        0) verdict=PASS ;;
        124|137) verdict=TIMEOUT ;;
        *) verdict=FAIL ;;
    esac
    [ "$verdict" = PASS ] || FAILED=$((FAILED + 1))
    record "$name" "$verdict" "$((tenths / 10)).$((tenths % 10))" \
        "exit $rc$([ "$verdict" = TIMEOUT ] && echo ", stopped at $limit s")"
    pack
}

MV="$PY bin/minivae"
if $DRY; then
    echo "budget $BUDGET_S s in all (each step: the smaller of its cap and what is left);" \
         "python: $PY"
else
    mkdir -p "$OUT" "$WORK" "$RUNS" || die "cannot create $OUT or $WORK"
    : >"$WORK/summary.txt"
    echo "gpu_check.sh: $(date -u '+%Y-%m-%d %H:%M:%S UTC'), budget $BUDGET_S s, out $OUT" \
        | tee -a "$WORK/summary.txt"
    STATUS[gpu-data]=PASS
    for ds in "${DATASETS[@]}"; do
        for f in "${FILES[@]}"; do
            [ -f "gpu-data/$ds/$f" ] || STATUS[gpu-data]=missing
        done
    done
    [ "${STATUS[gpu-data]}" = PASS ] || echo "gpu-data/ is incomplete: run 'bash" \
        "benchmarks/gpu_check.sh --prepare' here and carry gpu-data" | tee -a "$WORK/summary.txt"
fi

# -- the steps, most telling first: what a user runs, then the detailed tables ----------------
# (pytest-cupy already runs the float64 gradient table and the float32 checks on CuPy's default
# tier; the gradcheck steps print the whole table per tier and dtype.)
step env 30 "nvidia-smi; $PY -c 'import cupy; cupy.show_config()'; \
$PY -c 'import torch; print(\"torch\", torch.__version__, \"CUDA\", torch.version.cuda)'; \
$PY -m pytest --version; ls -l gpu-data/*/; \
$PY -c 'from minivae.backend import cupy_status as s; m, why = s(); print(\"CuPy:\", why); \
raise SystemExit(m is None)'"
step pytest-cupy 150 "$PY -m pytest -q -rs -k cupy -p no:cacheprovider \
\$($PY -c 'import xdist' >/dev/null 2>&1 && echo '-n 4') --junitxml=$WORK/pytest-cupy.xml tests"
for run in mlp:mnist conv:fashion-mnist; do
    model=${run%%:*} dataset=${run#*:}
    dir=$RUNS/$model-$dataset
    # --impl auto: the gpu tier once it passes its self-check (the log says if it did not);
    # --cuda-graph auto (the default): the step replayed from a CUDA graph, then the same run
    # eagerly, and the two compared (the same kernels on the same inputs: equal to rounding)
    step train-$model 120 "$MV train --model $model --dataset $dataset --backend cupy --epochs 1 \
--mirror gpu-data --data-dir $DATA --out $dir" gpu-data
    step train-eager-$model 120 "$MV train --model $model --dataset $dataset --backend cupy \
--epochs 1 --cuda-graph off --mirror gpu-data --data-dir $DATA --out $dir-eager" gpu-data
    step compare-$model 30 "grep -q 'replayed from a CUDA graph' $WORK/train-$model.log && \
$PY benchmarks/gpu_check_compare.py $dir $dir-eager" train-eager-$model
    step plot-$model 60 "$MV plot $dir" train-$model
    # 20 importance samples, not the default 100: the check has minutes, not hours
    step evaluate-$model 90 "$MV evaluate $dir --iw-samples 20" train-$model
done
step gpu-bench 150 "$PY benchmarks/gpu_bench.py --save $WORK/gpu_bench.json"
for impl in plain gpu; do
    for dtype in float64 float32; do
        step gradcheck-$impl-$dtype 90 "$MV gradcheck --backend cupy --impl $impl --dtype $dtype"
    done
done
for model in mlp conv; do
    step bench-$model 60 "$MV bench --backend cupy --model $model --steps 50"
done

$DRY && exit 0
echo "gpu_check.sh: done in $(($(date +%s) - START)) s, $FAILED step(s) did not pass" \
    | tee -a "$WORK/summary.txt"
pack
shopt -s nullglob
for log in "$WORK"/*.log; do        # the end of each failing step's log, for output_tail
    grep -q '^== exit status 0$' "$log" && continue
    echo "---- $(basename "$log")"
    tail -n 15 "$log"
done
[ -f "$WORK/gpu-bench.log" ] && sed -n '/^gpu_bench:/,$p' "$WORK/gpu-bench.log"
[ "$FAILED" -eq 0 ]
