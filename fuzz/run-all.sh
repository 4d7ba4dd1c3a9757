#!/usr/bin/env bash
# Builds every fuzz target and runs each for FUZZ_SECONDS (default 20) seconds, starting from
# its seeds (fuzz/seeds/TARGET) and corpus (fuzz/corpus/TARGET, where new inputs go).
# Prints, per target, libFuzzer's final executions and exec/s. Exits non-zero if the build
# fails or any target crashes (the input is left in fuzz/artifacts/TARGET/).
#
#   fuzz/run-all.sh                      # every target, 20 s each
#   FUZZ_SECONDS=60 fuzz/run-all.sh      # longer
#   fuzz/run-all.sh arp dns_server       # only these
#
# Extra libFuzzer flags: FUZZ_ARGS="-rss_limit_mb=4096".
set -uo pipefail

cd "$(dirname "$0")/.." || exit 2
seconds="${FUZZ_SECONDS:-20}"
toolchain="${FUZZ_TOOLCHAIN:-+nightly}"
logs="$(mktemp -d "${TMPDIR:-/tmp}/usernet-fuzz.XXXXXX")"

if ! cargo "$toolchain" fuzz build --fuzz-dir fuzz; then
    echo "fuzz build failed" >&2
    exit 2
fi

if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo "$toolchain" fuzz list --fuzz-dir fuzz)
fi

failed=()
printf '%-16s %14s %10s  %s\n' TARGET EXECUTIONS EXEC/S RESULT
for t in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$t"
    dirs=("fuzz/corpus/$t")
    [ -d "fuzz/seeds/$t" ] && dirs+=("fuzz/seeds/$t")
    log="$logs/$t.log"
    # control_api keeps one engine across inputs (reset to a baseline each time): gateways it
    # re-creates start DNS worker threads that outlive the input and the process, which
    # LeakSanitizer reports as leaks, per input and at exit (removed-port and churn leaks are
    # tested by e2e_churn).
    extra=()
    asan="${ASAN_OPTIONS:-}"
    if [ "$t" = control_api ]; then
        extra=(-detect_leaks=0)
        asan="${asan:+$asan:}detect_leaks=0"
    fi
    # shellcheck disable=SC2086 # FUZZ_ARGS is a list of flags
    ASAN_OPTIONS="$asan" cargo "$toolchain" fuzz run --fuzz-dir fuzz "$t" "${dirs[@]}" -- \
        -max_total_time="$seconds" -print_final_stats=1 -timeout=10 "${extra[@]}" ${FUZZ_ARGS:-} \
        >"$log" 2>&1
    rc=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n1)
    if [ "$rc" -eq 0 ]; then
        result=ok
    else
        result="FAILED (exit $rc; log $log)"
        failed+=("$t")
        artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n1)
        [ -n "$artifact" ] && result="$result; input $artifact"
    fi
    printf '%-16s %14s %10s  %s\n' "$t" "${execs:--}" "${rate:--}" "$result"
done

if [ "${#failed[@]}" -gt 0 ]; then
    echo "crashed or failed: ${failed[*]} (logs in $logs)" >&2
    exit 1
fi
rm -rf "$logs"
