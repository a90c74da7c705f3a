#!/usr/bin/env bash
# Builds the fuzz targets on the stable toolchain (libFuzzer without coverage
# instrumentation) and replays the committed seeds and regression inputs through
# each of them: every input must run without a panic, an abort or a timeout.
# Fuzzing itself needs nightly and cargo-fuzz: see docs/reliability.md, "Fuzzing".
set -euo pipefail
cd "$(dirname "$0")"
# The fuzz crate is its own workspace, built into fuzz/target unless CARGO_TARGET_DIR
# says otherwise (sharing the workspace's target reuses its compiled dependencies).
bin_dir=${CARGO_TARGET_DIR:-target}/debug
cargo build --locked --bins
for target in safetensors_parse bundle_load suite_manifest weight_map inspect; do
    inputs=(corpus/"$target")
    if [ -d regressions/"$target" ]; then
        inputs+=(regressions/"$target")
    fi
    echo "replaying ${inputs[*]} through $target"
    "$bin_dir/$target" -runs=0 -timeout=60 -rss_limit_mb=2048 -malloc_limit_mb=2048 "${inputs[@]}"
done
