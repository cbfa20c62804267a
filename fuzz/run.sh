#!/usr/bin/env bash
# Fuzzes manifest parsing (fuzz_targets/manifest.rs), or with FUZZ_TARGET=proxy_wire the
# proxy's SOCKS5/CONNECT parsers (fuzz_targets/proxy_wire.rs). Never part of CI: it needs
# libFuzzer and the compiler's unstable -Z flags.
#
#   fuzz/run.sh [SECONDS]        fuzz for SECONDS (default 600), growing corpus/manifest
#   fuzz/run.sh cmin             minimize corpus/manifest in place (do this before committing)
#   fuzz/run.sh tmin ARTIFACT    minimize a crashing input from artifacts/manifest/
#   fuzz/run.sh repro ARTIFACT   run one input once, e.g. to check a fix
#
# Needs `cargo install cargo-fuzz` (0.13.2 tested) and a C++ compiler (libfuzzer-sys builds
# libFuzzer). Only a stable toolchain (1.95) was available when this was written:
# RUSTC_BOOTSTRAP=1 lets it accept the -Zsanitizer=address and coverage flags cargo-fuzz
# passes, and that works as is (AddressSanitizer included). With a nightly toolchain,
# `cargo +nightly fuzz ...` without RUSTC_BOOTSTRAP does the same.
#
# Findings land in fuzz/artifacts/manifest/ (crash-*, timeout-*, oom-*), which is ignored by
# git: turn each one into a unit test in api-types instead of committing it.
set -euo pipefail
cd "$(dirname "$0")"
export RUSTC_BOOTSTRAP=1
# Own build directory: the fuzz build uses different flags and would otherwise evict the
# workspace's artifacts.
target_dir="${CARGO_TARGET_DIR:-$PWD/target}/fuzz"
fuzz=(cargo fuzz)
target="${FUZZ_TARGET:-manifest}"

case "${1:-run}" in
cmin)
    "${fuzz[@]}" cmin --target-dir "$target_dir" "$target" "corpus/$target"
    ;;
tmin)
    "${fuzz[@]}" tmin --target-dir "$target_dir" "$target" "${2:?artifact to minimize}"
    ;;
repro)
    "${fuzz[@]}" run --target-dir "$target_dir" "$target" "${2:?input to run}"
    ;;
*)
    seconds="${1:-600}"
    [[ "$seconds" == run ]] && seconds="${2:-600}"
    # -max_len: 64 KiB reaches every limit but the body and string ones, which the unit
    # tests in api-types/tests/hostile.rs cover; longer inputs only slow the search down.
    # -timeout: a single input running 10 s is a finding (the limits promise < 2 s).
    # -rss_limit_mb: the parse limits bound memory far below this; going over is a finding.
    "${fuzz[@]}" run --target-dir "$target_dir" "$target" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -max_len=65536 -timeout=10 -print_final_stats=1
    ;;
esac
