#!/usr/bin/env bash
# Runs a cargo-fuzz target: manifest parsing (fuzz_targets/manifest.rs, the default) or,
# with FUZZ_TARGET=proxy_wire, the proxy's SOCKS5/CONNECT parsers
# (fuzz_targets/proxy_wire.rs). Never part of CI: it needs libFuzzer and the compiler's
# unstable -Z flags (docs/hardening.md).
#
#   fuzz/run.sh [SECONDS]        fuzz for SECONDS (default 600)
#   fuzz/run.sh cmin             minimize corpus/$FUZZ_TARGET in place, merging in what the
#                                runs found (do this before committing a corpus)
#   fuzz/run.sh tmin ARTIFACT    minimize a crashing input from artifacts/$FUZZ_TARGET/
#   fuzz/run.sh repro ARTIFACT   run one input once, e.g. to check a fix
#
#   FUZZ_TARGET=proxy_wire fuzz/run.sh 300
#
# A run reads the committed seeds in corpus/$FUZZ_TARGET/ and writes what it learns to
# target/corpus/$FUZZ_TARGET/ (git-ignored), so a run never dirties the committed corpus.
#
# Needs `cargo install cargo-fuzz` (0.13.2 tested) and a C++ compiler (libfuzzer-sys builds
# libFuzzer). Only a stable toolchain (1.95) was available when this was written:
# RUSTC_BOOTSTRAP=1 lets it accept the -Zsanitizer=address and coverage flags cargo-fuzz
# passes, and that works as is (AddressSanitizer included). With a nightly toolchain,
# `cargo +nightly fuzz ...` without RUSTC_BOOTSTRAP does the same. The first build takes
# several minutes (its own target directory, every dependency with ASan).
#
# Findings land in artifacts/$FUZZ_TARGET/ (crash-*, timeout-*, oom-*), which is ignored by
# git: turn each one into a unit test (manifest: api-types; proxy_wire:
# fishd/src/proxy/wire.rs) instead of committing it.
set -euo pipefail
cd "$(dirname "$0")"
export RUSTC_BOOTSTRAP=1
# Own build directory: the fuzz build uses different flags and would otherwise evict the
# workspace's artifacts.
target_dir="${CARGO_TARGET_DIR:-$PWD/target}/fuzz"
fuzz=(cargo fuzz)
target="${FUZZ_TARGET:-manifest}"
[[ -f "fuzz_targets/$target.rs" ]] || { echo "FUZZ_TARGET=$target: no fuzz_targets/$target.rs" >&2; exit 2; }
scratch="$target_dir/corpus/$target"
mkdir -p "$scratch"
# -max_len: manifest: 64 KiB reaches every limit but the body and string ones, which the
# unit tests in api-types/tests/hostile.rs cover; proxy_wire: 16 KiB is twice the largest
# head the proxy reads (8 KiB, then 431). Longer inputs only slow the search down.
case "$target" in
proxy_wire) max_len=16384 ;;
*) max_len=65536 ;;
esac

case "${1:-run}" in
cmin)
    # What the runs learnt joins the committed seeds, then libFuzzer keeps the smallest set
    # with the same coverage.
    find "$scratch" -maxdepth 1 -type f -exec cp -n -t "corpus/$target" {} +
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
    # -timeout: a single input running 10 s is a finding (the parsers promise far less).
    # -rss_limit_mb: the parse limits bound memory far below this; going over is a finding.
    "${fuzz[@]}" run --target-dir "$target_dir" "$target" "$scratch" "corpus/$target" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -max_len="$max_len" -timeout=10 -print_final_stats=1
    ;;
esac
