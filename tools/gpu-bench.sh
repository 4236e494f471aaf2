#!/usr/bin/env bash
# One prepared run on a machine with a real GPU: the adapter, the kernel, model
# and end-to-end tests on that GPU, our benchmarks with and without cooperative
# matrices, and (when its folder is given) the PyTorch speed anchor, all in the
# same call so that every ratio compares figures from the same card.
#
#   tools/gpu-bench.sh prepare DIR     # here: build, and pack the pnp binary and the
#                                      # test binaries, stripped, into DIR/bins.tar.xz
#   tools/gpu-bench.sh run DIR OUT [TORCH_BENCH_DIR]
#                                      # there: everything, logs under OUT,
#                                      # autotune's cache file under OUT/cache
#
# The test binaries find their fixtures through the absolute path of the checkout
# they were built in; `run` links that path to the current checkout when it is
# missing. Each step's log goes to OUT/<step>.log; a failing step does not stop
# the ones after it, and the last line says which failed.
#
# Size: a device call carries the working tree and DIR within 64 MiB. The packed
# binaries are about a quarter of their size; the tracked tree is near 73 MB, so
# move the two single-file checkpoints (kernels-tests/fixtures/models/*.safetensors,
# 27 MB, used only by the single-file tests) out of the checkout for the call and
# restore them after with `git checkout -- kernels-tests/fixtures/models`.
set -uo pipefail
cd "$(dirname "$0")/.."

case "${1:-}" in
prepare)
    dir=${2:?usage: tools/gpu-bench.sh prepare DIR}
    set -e
    mkdir -p "$dir"
    stage=$(mktemp -d)
    cargo build --release
    cp target/release/pnp "$stage/pnp"
    # The test executables cargo would run, by suite name.
    # (Test harnesses only: the json also lists the pnp binary itself,
    # whose name would collide with the pnp suite's.)
    cargo test --release --no-run --message-format=json --test kernels --test models --test pnp 2>/dev/null \
        | grep -o '"executable":"[^"]*/deps/[^"]*"' | cut -d'"' -f4 \
        | while read -r exe; do
            name=$(basename "$exe" | sed 's/-[0-9a-f]*$//')
            cp "$exe" "$stage/test-$name"
        done
    strip "$stage"/* 2>/dev/null || true
    pwd > "$stage/built-in"
    tar -C "$stage" -cJf "$dir/bins.tar.xz" .
    rm -rf "$stage"
    ls -la "$dir"
    ;;
run)
    dir=${2:?usage: tools/gpu-bench.sh run DIR OUT [TORCH_BENCH_DIR]}
    out=${3:?usage: tools/gpu-bench.sh run DIR OUT [TORCH_BENCH_DIR]}
    torch=${4:-}
    mkdir -p "$out"
    bins=$(mktemp -d)
    tar -C "$bins" -xJf "$dir/bins.tar.xz"
    dir=$bins
    built=$(cat "$dir/built-in")
    if [ ! -e "$built" ]; then
        mkdir -p "$(dirname "$built")"
        ln -s "$(pwd)" "$built"
    fi
    failed=()
    step() {
        local name=$1
        shift
        echo "== $name: $*"
        if ! timeout "${STEP_TIMEOUT:-180}" "$@" > "$out/$name.log" 2>&1; then
            failed+=("$name")
        fi
        tail -n 12 "$out/$name.log"
    }
    nvidia-smi -L > "$out/card.log" 2>&1 || true
    cat "$out/card.log"
    # Autotune's winners land in OUT/cache (its timings are the profile).
    export PNP_CACHE_DIR="$out/cache"
    # QUICK=1: the tuned rows, the tests and the tuned pipeline only.
    quick=${QUICK:-0}
    [ "$quick" = 1 ] || step info "$dir/pnp" bench plan --arch sd21-base --batch 1
    step kernels-tuned "$dir/pnp" bench kernels --iters 5
    if [ "$quick" != 1 ]; then
        step kernels-rule "$dir/pnp" bench kernels --iters 5 --no-autotune
        step kernels-nocoop env PNP_NO_COOP=1 "$dir/pnp" bench kernels --iters 5 --no-autotune
    fi
    # The coop tests assert that the cooperative variants ran wherever the
    # adapter lists a configuration we use.
    for t in "$dir"/test-*; do
        step "$(basename "$t")" env PNP_EXPECT_COOP="${PNP_EXPECT_COOP:-1}" "$t" --nocapture
    done
    step pipeline-tuned "$dir/pnp" bench pipeline --arch sd21-base
    [ "$quick" = 1 ] || step pipeline-rule "$dir/pnp" bench pipeline --arch sd21-base --no-autotune
    if [ -n "$torch" ]; then
        step torch-unet python3 "$torch/torch_pnp_bench.py" --arch sd21base --unet-only
        step torch-50 python3 "$torch/torch_pnp_bench.py" --arch sd21base --inversion-steps 50 --no-preview
    fi
    if [ ${#failed[@]} -gt 0 ]; then
        echo "failed: ${failed[*]}"
        exit 1
    fi
    echo "all steps passed"
    ;;
*)
    echo "usage: tools/gpu-bench.sh prepare DIR | run DIR OUT [TORCH_BENCH_DIR]" >&2
    exit 2
    ;;
esac
