#!/usr/bin/env bash
# Fuzzes one target for a while: ./fuzz/run.sh TARGET SECONDS (build first: cargo +nightly fuzz build -O).
# Runs in fork mode so that one crash does not end the run; crashing inputs land
# in fuzz/artifacts/TARGET/, the grown corpus in fuzz/corpus/TARGET/ (git-ignored
# except the seed-* files).
set -euo pipefail
cd "$(dirname "$0")"
target=$1
seconds=${2:-600}
mkdir -p artifacts/"$target"
ASAN_OPTIONS=detect_odr_violation=0 target/x86_64-unknown-linux-gnu/release/"$target" \
    -fork=1 -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1 \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=2048 \
    -artifact_prefix=artifacts/"$target"/ -print_final_stats=1 \
    corpus/"$target"
