#!/usr/bin/env bash
# Runs every fuzz target (or the ones named) for a bounded time each and
# prints what each did. CI (tests/run.sh) runs it with a short time:
#
#     tests/fuzz/run.sh 15                  # 15 s per target
#     tests/fuzz/run.sh 180 overlay_datagram
#
# Exits 1 if any target crashed (a panic, a failed check, a timeout or an
# out-of-memory), after copying libFuzzer's crash files into
# regressions/<target>/: commit them, and `cargo test -p vxmesh-testbed
# --test fuzz_regressions` replays them until the product is fixed.
# Exits 2 if the targets do not build.
#
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`).
# The seeds in corpus/<target>/ are only read; what libFuzzer finds grows
# in work/<target>/ (not committed), so a second run starts from there.
set -uo pipefail
cd "$(dirname "$0")"

seconds=${1:-20}
shift || true
if ! [[ "$seconds" =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: $0 [SECONDS_PER_TARGET] [TARGET...]" >&2
    exit 2
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "run.sh: needs cargo-fuzz on nightly: rustup toolchain install nightly && cargo install cargo-fuzz" >&2
    exit 2
fi

# -a: debug assertions and overflow checks, as in the test suite.
# 16 codegen units instead of cargo-fuzz's 1: a cold build of every target
# takes about half as long (8 instead of 14 minutes on two cores) for no
# measurable loss of executions per second.
flags=(--fuzz-dir . -a --codegen-units 16)
if [ $# -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo +nightly fuzz list --fuzz-dir .)
fi

echo "== building ${#targets[@]} fuzz targets"
if ! cargo +nightly fuzz build "${flags[@]}"; then
    echo "run.sh: the fuzz targets do not build" >&2
    exit 2
fi

failed=()
summary=()
for t in "${targets[@]}"; do
    mkdir -p "work/$t" "artifacts/$t"
    before=$(ls "artifacts/$t")
    log="work/$t.log"
    echo "== $t: ${seconds} s"
    # -timeout: one input running 10 s is a hang, reported as a crash.
    cargo +nightly fuzz run "${flags[@]}" "$t" "work/$t" "corpus/$t" -- \
        -max_total_time="$seconds" -timeout=10 -print_final_stats=1 >"$log" 2>&1
    rc=$?
    runs=$(grep -oE 'number_of_executed_units: [0-9]+' "$log" | tail -n1 | grep -oE '[0-9]+$')
    cov=$(grep -oE 'cov: [0-9]+ ft: [0-9]+' "$log" | tail -n1)
    result=ok
    if [ "$rc" -ne 0 ]; then
        result="CRASH (exit $rc)"
        failed+=("$t")
        tail -n 60 "$log"
        mkdir -p "regressions/$t"
        for f in $(ls "artifacts/$t"); do
            if ! grep -qxF "$f" <<<"$before"; then
                cp "artifacts/$t/$f" "regressions/$t/$f"
                echo "   saved regressions/$t/$f"
            fi
        done
    fi
    summary+=("$(printf '%-18s %12s  %-22s %s' "$t" "${runs:-?}" "${cov:-cov: ? ft: ?}" "$result")")
done

echo
printf '%-18s %12s  %-22s %s\n' TARGET RUNS COVERAGE RESULT
printf '%s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
    echo "run.sh: crashed: ${failed[*]} (inputs in regressions/, logs in work/<target>.log)" >&2
    exit 1
fi
