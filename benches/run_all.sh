#!/usr/bin/env bash
# Regenerates BENCHMARKS.md. Each table's rows are measured back to back: its
# criterion runs at 1 and 2 threads (replica, candle, the composition), then its
# PyTorch rows (python/bench_torch.py), so that a shared host's slow phases, which
# last minutes, fall on both sides of a ratio rather than on one. The whole is
# repeated PASSES times (default 2) and each row keeps its fastest pass.
#
#     benches/run_all.sh                    # every table (about 25 minutes a pass on 2 cores)
#     benches/run_all.sh attention matmul   # some tables; the others keep their rows
#
# PYTHON names the interpreter with torch and transformers (default ~/venv-ref/bin/python).
# Each pass's results stay in target/bench-passes/N.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-$HOME/venv-ref/bin/python}

kernels=(memory_bandwidth softmax softmax_scale_causal layer_norm rms_norm gelu_erf gelu_tanh silu swiglu
    rope_half_split rope_interleaved attention attention_prefill attention_fwd_bwd matmul)
blocks=(block_attention block_mlp block_transformer minilm_forward gpt2_forward)
# The tables that run a backward: candle's own pool beside rayon's slows those at 2
# threads (docs/training.md), so their candle element-wise ops run on one thread.
backward=(attention_fwd_bwd training_step)
tables=("$@")
[ ${#tables[@]} -gt 0 ] || tables=("${kernels[@]}" "${blocks[@]}" training_step)

passes=${PASSES:-2}
cargo bench --bench kernels --bench blocks --bench training --no-run

measure() {
    local table=$1 bench times threads candle_threads
    case " ${kernels[*]} " in
        *" $table "*) bench=kernels times=(--warm-up-time 1 --measurement-time 2) ;;
        *) bench=blocks times=() ;;
    esac
    [ "$table" = training_step ] && bench=training
    for threads in 1 2; do
        candle_threads=$threads
        case " ${backward[*]} " in *" $table "*) candle_threads=1 ;; esac
        CANDLE_NUM_THREADS=$candle_threads cargo bench -q --bench "$bench" -- "^$table/.*_${threads}t/" "${times[@]}" >/dev/null
    done
    if [ "$table" != memory_bandwidth ]; then
        "$python" python/bench_torch.py --out target/bench_torch.json --merge --only "^$table\$"
    fi
}

criterion_dirs=() torch_files=()
for pass in $(seq "$passes"); do
    for table in "${tables[@]}"; do
        measure "$table"
    done
    kept=target/bench-passes/$pass
    rm -rf "$kept" && mkdir -p "$kept"
    # -a keeps the result files' times, which BENCHMARKS.md reports as when each row was measured.
    cp -a target/criterion "$kept/criterion" && cp target/bench_torch.json "$kept/torch.json"
    criterion_dirs+=("$kept/criterion") torch_files+=("$kept/torch.json")
done

python3 python/benchmarks_md.py --criterion "${criterion_dirs[@]}" --torch "${torch_files[@]}" --out BENCHMARKS.md
