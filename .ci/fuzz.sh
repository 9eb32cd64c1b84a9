#!/usr/bin/env bash
# Fuzz smoke tier (CRASH-TESTING.md 3.6 and 3.10): builds the cargo-fuzz targets in fuzz/ and runs
# each one for WHARF_FUZZ_SECS seconds (default 20), starting from a scratch copy of its committed
# seeds, and prints how many inputs each one executed. Exits non-zero on any crash, timeout or
# OOM (the reproducer is left in fuzz/artifacts/<target>/, see fuzz/README.md). When cargo-fuzz
# is missing and cannot be installed, prints `fuzz: skipped (<reason>)` and exits 0.
#
# Environment:
#   WHARF_FUZZ_SECS       seconds per target (default 20)
#   WHARF_FUZZ_TARGETS    the targets to run, space-separated (default: all nine)
#   WHARF_FUZZ_TOOLCHAIN  `stable` forces the stable fallback even when nightly exists
#   WHARF_FUZZ_SKIP_KNOWN `1` (default): the targets do not explore the open findings listed in
#                         fuzz/README.md ("Known open findings"), so CI flags new ones only;
#                         `0` explores them too (and fails until they are fixed)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

secs=${WHARF_FUZZ_SECS:-20}
export WHARF_FUZZ_SKIP_KNOWN=${WHARF_FUZZ_SKIP_KNOWN:-1}
all="record_decode segment_recover dir_open ops_model ops_crash ops_faults corrupt_then_recover salvage verify"
targets=${WHARF_FUZZ_TARGETS:-$all}
started=$(date +%s)
work=$(mktemp -d "${TMPDIR:-/tmp}/wharf-fuzz.XXXXXX")
trap 'rm -rf "$work"' EXIT

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: cargo-fuzz not found, installing it (cargo install cargo-fuzz --locked)"
    if ! cargo install cargo-fuzz --locked >"$work/install.log" 2>&1; then
        tail -n 5 "$work/install.log" | sed 's/^/  /'
        reason=$(grep -m1 -E '^error' "$work/install.log" || echo "cargo install failed")
        echo "fuzz: skipped (cargo-fuzz could not be installed: $reason)"
        exit 0
    fi
fi

# Nightly gets AddressSanitizer (cargo-fuzz's default); stable builds with `-s none`: coverage
# guidance still works, memory errors are not caught (wharf is `#![deny(unsafe_code)]` anyway).
if [ "${WHARF_FUZZ_TOOLCHAIN:-}" != stable ] && cargo +nightly --version >/dev/null 2>&1; then
    toolchain=(+nightly)
    sanitizer=()
    what="$(cargo +nightly --version), sanitizer address"
else
    toolchain=()
    sanitizer=(-s none)
    what="$(cargo --version), no sanitizer (-s none)"
fi
echo "fuzz: $(cargo fuzz --version); $what; ${secs}s per target"
known=$(grep -cE '^[0-9]+\. \*\*' fuzz/README.md || true)
if [ "$WHARF_FUZZ_SKIP_KNOWN" = 1 ] && [ "${known:-0}" -gt 0 ]; then
    echo "fuzz: skipping the $known known open findings of fuzz/README.md (WHARF_FUZZ_SKIP_KNOWN=0 includes them)"
fi

build_started=$(date +%s)
cargo "${toolchain[@]}" fuzz build "${sanitizer[@]}"
build_secs=$(( $(date +%s) - build_started ))
echo "fuzz: build took ${build_secs}s"

failed=()
summary=()
for t in $targets; do
    corpus="$work/corpus/$t"
    mkdir -p "$corpus"
    if [ -d "fuzz/seeds/$t" ]; then
        cp fuzz/seeds/"$t"/* "$corpus"/
    fi
    log="$work/$t.log"
    echo "fuzz: running $t for ${secs}s"
    t_started=$(date +%s)
    set +e
    cargo "${toolchain[@]}" fuzz run "${sanitizer[@]}" "$t" "$corpus" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -malloc_limit_mb=512 -timeout=10 \
        -print_final_stats=1 -dict="$PWD/fuzz/dict" >"$log" 2>&1
    rc=$?
    set -e
    t_secs=$(( $(date +%s) - t_started ))
    execs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' | tail -n 1 || true)
    if [ -z "$execs" ]; then
        execs=$(grep -oE '^#[0-9]+' "$log" | tr -d '#' | tail -n 1 || true)
    fi
    cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -n 1 | grep -oE '[0-9]+' || true)
    corpus_n=$(find "$corpus" -type f | wc -l)
    if [ "$rc" -eq 0 ]; then
        status=ok
    else
        status="FAILED (exit $rc)"
        failed+=("$t")
        echo "---- $t: what failed (full log: rerun with the reproducer below)"
        grep -E -A3 "panicked at|ERROR: |SUMMARY: |ALARM: |out-of-memory|==[0-9]+==" "$log" \
            | grep -vE '^\s+(at |#?[0-9]+:? )' | head -n 40
        artifact=$(grep -oE 'Test unit written to [^ ]+' "$log" | tail -n 1 | cut -d' ' -f5-)
        echo "---- reproducer: ${artifact:-none written (see the build output above)}"
        echo "---- replay it: cargo ${toolchain[*]} fuzz run ${sanitizer[*]:+${sanitizer[*]} }$t <reproducer>"
        echo "---- or read it: cd fuzz && cargo run --example explain -- $t <reproducer> (fuzz/README.md)"
    fi
    line=$(printf '%-22s %-18s execs %10s  (%s/s)  cov %6s  corpus %5s' "$t" "$status" \
        "${execs:-?}" "$(( ${execs:-0} / (t_secs > 0 ? t_secs : 1) ))" "${cov:-?}" "$corpus_n")
    summary+=("$line")
    echo "fuzz: $line"
done

echo
echo "fuzz summary ($what; build ${build_secs}s, total $(( $(date +%s) - started ))s)"
printf '  %s\n' "${summary[@]}"
if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzz: FAILED: ${failed[*]}"
    exit 1
fi
echo "fuzz: all targets passed"
