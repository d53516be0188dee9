#!/usr/bin/env bash
# Runs fuzz targets one after the other, each for FUZZ_SECONDS, from the committed seeds
# (fuzz/seeds/<target>) copied into a working corpus (fuzz/corpus/<target>, not committed).
# Usage: fuzz/run.sh [target...]   (no argument: every target). docs/fuzzing.md explains it.
# A crash, timeout or out-of-memory input stops that target; its input is saved under
# fuzz/artifacts/<target>/ and the script goes on with the next target, then exits 1.
set -euo pipefail

cd "$(dirname "$0")/.."
FUZZ_SECONDS=${FUZZ_SECONDS:-300}
FUZZ_TIMEOUT=${FUZZ_TIMEOUT:-10}    # seconds one input may take before it counts as a hang
FUZZ_RSS_MB=${FUZZ_RSS_MB:-2048}    # memory limit; above it the input counts as a finding
# cargo-fuzz flags, the same for build and run so a run does not rebuild: optimised with debug
# assertions and overflow checks, no sanitizer (the code under test is safe Rust), 16 codegen
# units so the first build (wasmtime and all) takes minutes rather than an hour.
FLAGS=(-O -a -s none --codegen-units 16 --target-dir fuzz/target)
ALL=(avro_decode avro_schema replay_id soql whmcs_classify salesforce_classify scenario manifest policy admin_upload)

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    rustup toolchain install nightly --profile minimal
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${ALL[@]}")

cargo +nightly fuzz build "${FLAGS[@]}"

mkdir -p fuzz/logs
failed=()
for target in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$target" "fuzz/artifacts/$target"
    cp -n fuzz/seeds/"$target"/* "fuzz/corpus/$target/"
    log="fuzz/logs/$target.log"
    echo "== $target: ${FUZZ_SECONDS}s (log: $log)"
    if cargo +nightly fuzz run "${FLAGS[@]}" "$target" "fuzz/corpus/$target" -- \
        -max_total_time="$FUZZ_SECONDS" -timeout="$FUZZ_TIMEOUT" -rss_limit_mb="$FUZZ_RSS_MB" \
        -print_final_stats=1 >"$log" 2>&1; then
        :
    else
        failed+=("$target")
        echo "!! $target: a finding; see $log and fuzz/artifacts/$target/"
    fi
    grep -E '^#[0-9]+[[:space:]]+DONE|^Done [0-9]+ runs' "$log" || tail -n 5 "$log"
    echo "   corpus: $(find "fuzz/corpus/$target" -type f | wc -l) inputs"
done

if [ ${#failed[@]} -gt 0 ]; then
    echo "findings in: ${failed[*]}"
    exit 1
fi
echo "no findings in: ${targets[*]}"
