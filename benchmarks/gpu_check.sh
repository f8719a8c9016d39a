#!/usr/bin/env bash
# One-shot check of kvserve on a machine with an NVIDIA GPU, run from the repository root:
#   bash benchmarks/gpu_check.sh
# 1. makes a venv ($GPU_CHECK_VENV, default /tmp/kvserve-gpu-venv; outside the repo),
#    `pip install torch` (whatever build pip gives there: CUDA on Linux x86-64) and
#    `pip install -e '.[dev]'`;
# 2. prints nvidia-smi and torch.cuda's view of the GPU;
# 3. runs `pytest -m cuda -q` with KVSERVE_TEST_DEVICE=cuda (exit 5, no test marked cuda,
#    is reported as such, not as a failure);
# 4. runs the engine benchmarks (bench_engine_throughput, bench_session_ttft,
#    bench_worker_threads) and every other benchmarks/bench_*.py that takes --device, with
#    --device cuda and short settings;
# 5. copies the JSON results of this run and the log into "$OUT" when it is set.
# Every step has its own time limit and the whole run stops starting steps after
# $GPU_CHECK_BUDGET_S seconds (default 540, under a 10-minute limit); a failing step does
# not stop the others. The summary at the end lists each step; the exit status is 1 when
# any step failed.
#
# Offline machines: if `python3` there already has a CUDA torch (e.g. in a venv of its
# own), the new venv sees its packages (see make_venv), so `pip install torch` is already
# satisfied; if `pip install -e '.[dev]'` cannot reach an index, the script falls back to
# an install without build isolation or dependencies, and else to PYTHONPATH.
set -u

cd "$(dirname "$0")/.." || exit 1
REPO=$PWD
START=$(date +%s)
BUDGET_S=${GPU_CHECK_BUDGET_S:-540}
VENV=${GPU_CHECK_VENV:-/tmp/kvserve-gpu-venv}
BASE_PYTHON=${PYTHON:-python3}
PY=$VENV/bin/python
LOG_DIR=${OUT:-/tmp/kvserve-gpu-check}
STAMP=$(mktemp)
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PYTHONUNBUFFERED=1
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
SUMMARY=()
FAILED=0

# step NAME LIMIT_S COMMAND...: run COMMAND under `timeout`, record how it ended.
step() {
    local name=$1 limit=$2
    shift 2
    local elapsed=$(($(date +%s) - START))
    local left=$((BUDGET_S - elapsed))
    if ((left < 15)); then
        SUMMARY+=("SKIPPED  $name (time budget of ${BUDGET_S}s spent)")
        FAILED=1
        return
    fi
    ((limit > left)) && limit=$left
    echo
    echo "=== $name (limit ${limit}s, at ${elapsed}s) ==="
    local t0
    t0=$(date +%s)
    timeout --kill-after=10 "$limit" "$@"
    local rc=$?
    local took=$(($(date +%s) - t0))
    local result
    if [[ $rc == 5 && $name == pytest* ]]; then
        result="no tests" # pytest's exit status when no test is marked cuda
    else
        case $rc in
            0) result="ok      " ;;
            124 | 137) result="TIMEOUT " FAILED=1 ;;
            *) result="FAILED  " FAILED=1 ;;
        esac
    fi
    SUMMARY+=("$result $name (rc $rc, ${took}s)")
    return "$rc"
}

# The new venv sees the base interpreter's packages. `--system-site-packages` alone gives
# the site-packages of the interpreter the base python was built from, not those of a
# venv it belongs to (where a preinstalled CUDA torch often lives), so a .pth file adds the
# base python's own site directories too (after the venv's own, so pip installs win).
make_venv() {
    if [[ ! -x $PY ]]; then
        "$BASE_PYTHON" -m venv --system-site-packages "$VENV" || return 1
    fi
    local site
    site=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') || return 1
    "$BASE_PYTHON" - >"$site/zz_kvserve_base_python.pth" <<'EOF'
import site
print("import site; " + "; ".join(f"site.addsitedir({d!r})" for d in site.getsitepackages()))
EOF
    "$PY" -c 'import sys; print(sys.version); print("\n".join(sys.path))'
}

install_torch() {
    "$PY" -m pip install --retries 1 --timeout 20 torch && return 0
    # Offline, pip fails on a dependency it cannot fetch even when torch itself is there.
    "$PY" -c 'import torch; print("pip could not finish; using the torch already there:", torch.__version__)'
}

install_project() {
    "$PY" -m pip install --retries 1 --timeout 20 -e '.[dev]' && return 0
    echo "pip install -e '.[dev]' failed (no index reachable?); trying without build isolation"
    "$PY" -m pip install --no-build-isolation --no-deps -e . && return 0
    echo "editable install failed; the steps below import the repository through PYTHONPATH"
    return 1
}

gpu_info() {
    nvidia-smi
    "$PY" - <<'EOF'
import torch

print("torch", torch.__version__, "| built for CUDA", torch.version.cuda)
print("cuda available:", torch.cuda.is_available(), "| devices:", torch.cuda.device_count())
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"cuda:{i} {p.name}, {p.total_memory / 2**30:.1f} GiB, capability {p.major}.{p.minor}, "
          f"{p.multi_processor_count} SMs")
if torch.cuda.is_available():
    x = torch.randn(1024, 1024, device="cuda")
    print("matmul on cuda ok:", float((x @ x).sum()) == float((x @ x).sum()))
else:
    raise SystemExit("torch sees no CUDA device")
EOF
}

run_pytest() {
    KVSERVE_TEST_DEVICE=cuda "$PY" -m pytest -m cuda -q -p no:cacheprovider
}

main() {
    echo "kvserve GPU check in $REPO, $(date -u +%FT%TZ), budget ${BUDGET_S}s"
    echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
    if "$BASE_PYTHON" -c 'import torch, safetensors, pytest, tqdm; assert torch.cuda.is_available()' 2>/dev/null; then
        # The machine's python already has a CUDA torch and what the tests need: use it as
        # is (no network is needed; the repository is imported through PYTHONPATH).
        PY=$(command -v "$BASE_PYTHON")
        echo "using $PY as is: it has a CUDA torch, safetensors, pytest and tqdm"
    else
        step "create venv $VENV" 90 bash -c "$(declare -f make_venv); $(declare -p PY VENV BASE_PYTHON); make_venv"
        step "pip install torch" 150 bash -c "$(declare -f install_torch); $(declare -p PY); install_torch"
        step "pip install -e .[dev]" 120 bash -c "$(declare -f install_project); $(declare -p PY); install_project"
    fi
    step "gpu info" 60 bash -c "$(declare -f gpu_info); $(declare -p PY); gpu_info"
    step "pytest -m cuda" 150 bash -c "$(declare -f run_pytest); $(declare -p PY); run_pytest"

    step "bench_engine_throughput" 150 "$PY" benchmarks/bench_engine_throughput.py \
        --device cuda --quick --streams 1,8,32
    step "bench_session_ttft" 90 "$PY" benchmarks/bench_session_ttft.py --device cuda --quick
    step "bench_worker_threads" 120 "$PY" benchmarks/bench_worker_threads.py --device cuda --quick
    local f quick others=0
    for f in benchmarks/bench_*.py; do
        case $f in
            */bench_engine_throughput.py | */bench_session_ttft.py | */bench_worker_threads.py) continue ;;
        esac
        grep -q -- '"--device"' "$f" || continue
        others=$((others + 1))
        quick=()
        grep -q -- '--quick\|parse_args(' "$f" && quick=(--quick)
        step "$(basename "$f" .py)" 90 "$PY" "$f" --device cuda "${quick[@]}"
    done
    ((others == 0)) && echo && echo "(no other benchmark takes --device)"

    echo
    echo "=== results ==="
    local copied=0
    while IFS= read -r -d '' f; do
        echo "$f"
        if [[ -n ${OUT:-} ]]; then
            cp "$f" "$OUT/" && copied=$((copied + 1))
        fi
    done < <(find benchmarks/results -name '*.json' -newer "$STAMP" -print0)
    [[ -n ${OUT:-} ]] && echo "copied $copied JSON file(s) to \$OUT"

    echo
    echo "=== summary ($(($(date +%s) - START))s) ==="
    printf '%s\n' "${SUMMARY[@]}"
    return "$FAILED"
}

mkdir -p "$LOG_DIR"
main 2>&1 | tee "$LOG_DIR/gpu_check.log"
status=${PIPESTATUS[0]}
rm -f "$STAMP"
exit "$status"
