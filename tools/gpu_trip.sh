#!/usr/bin/env bash
# One trip to a lent GPU machine (the `device` tool): train resnet18_cifar on the GPU, run the GPU self-check,
# and bring back what the machine may return (at most 8 files of 16 MiB under $OUT).
#
#   tools/gpu_trip.sh prepare        # here: the data and the missing wheels into .trip/ (ignored by git)
#   tools/gpu_trip.sh run [FLAGS]    # there, with carry [".trip"]: trains (FLAGS: more `zoo train` flags), checks,
#                                    # and packs into $OUT
#   tools/gpu_trip.sh unpack DIR     # here: DIR holds what came back; rebuilds runs/gpu-trip/resnet18
#
# run's settings (environment): EPOCHS (60), BUDGET (training minutes, 4: the schedule is laid out over EPOCHS
# and fits the clock), CHECK (1: run benchmarks/gpu_check.py after training, within CHECK_SECONDS, 200),
# PART (15M: the size of each returned piece), TRIP (.trip), WORK (/tmp/gpu-trip).
set -euo pipefail
cd "$(dirname "$0")/.."
trip=${TRIP:-.trip}
data=cifar10-train-jpeg.tar.gz

prepare() {
    mkdir -p "$trip"
    install -m 0644 "${DATA:-../shared/data/$data}" "$trip/$data"  # writable: a second prepare replaces it
    # The machine's image has torch, torchvision, safetensors, huggingface_hub, pyyaml, tqdm and pillow, not fvcore
    # (the benchmark's FLOP counts) and what it imports; pure Python, built here as wheels for any Python 3.
    python3 -m pip wheel -q --no-deps -w "$trip" fvcore==0.1.5.post20221221 iopath==0.1.10 yacs==0.1.8 termcolor \
        portalocker tabulate
    du -sh "$trip"
}

run() {
    : "${OUT:?set OUT: the folder whose files come back}"
    local work=${WORK:-/tmp/gpu-trip} epochs=${EPOCHS:-60} budget=${BUDGET:-4}
    export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
    if compgen -G "$trip/*.whl" >/dev/null; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$work/site" \
            "$trip"/*.whl
        export PYTHONPATH=$PYTHONPATH:$work/site
    fi
    python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')"
    # The weights first: they are what the trip is for. (Progress bars are dropped from the log, epoch lines kept.)
    local trained=0 checked=0
    python3 tools/train.py --recipe resnet18-fast --epochs "$epochs" --time-budget "$budget" --dataset imagefolder \
        --root "$trip/$data" --cache-dir "$work/cache" --output "$work/resnet18" --overwrite "$@" 2>&1 |
        sed -u 's/\r/\n/g' | grep --line-buffered -v -E '(batch|it)/s' | tee "$OUT/train.log" || trained=$?
    if [ -f "$work/resnet18/best/model.safetensors" ]; then  # packed now: whatever the check does, these come back
        # best/ without its optimizer state, and the run's record: in pieces under the size limit, with a checksum
        local files=() f  # curves.png only where matplotlib is installed
        for f in best/model.safetensors best/config.json metrics.csv metrics.jsonl curves.png summary.json args.json \
            command.txt; do
            [ -e "$work/resnet18/$f" ] && files+=("resnet18/$f")
        done
        tar -C "$work" -cf "$work/resnet18.tar" "${files[@]}"
        (cd "$work" && sha256sum resnet18.tar) >"$OUT/resnet18.tar.sha256"
        split -b "${PART:-15M}" -d "$work/resnet18.tar" "$OUT/resnet18.tar.part-"
    fi
    if [ "${CHECK:-1}" = 1 ]; then  # its results are written after each step; only its two reports come back
        timeout -k 10 "${CHECK_SECONDS:-200}" python3 benchmarks/gpu_check.py --out "$work/gpu-check" || checked=$?
        mkdir -p "$OUT/gpu-check"
        cp "$work/gpu-check/results.json" "$work/gpu-check/summary.txt" "$OUT/gpu-check/" || true
    fi
    ls -lR "$OUT"
    echo "training exit $trained, gpu_check exit $checked"
    [ "$trained" = 0 ] && [ "$checked" = 0 ]
}

unpack() {
    local back=${1:?give the folder that came back: files_at of the run} dest=${2:-runs/gpu-trip}
    mkdir -p "$dest"
    cat "$back"/resnet18.tar.part-* >"$dest/resnet18.tar"
    (cd "$dest" && sha256sum -c "$(realpath "$back/resnet18.tar.sha256")")
    tar -C "$dest" -xf "$dest/resnet18.tar" && rm "$dest/resnet18.tar"
    [ -d "$back/gpu-check" ] && cp -r "$back/gpu-check" "$dest/"
    echo "unpacked into $dest: zoo validate --model resnet18_cifar --checkpoint $dest/resnet18/best ..."
}

case "${1:-}" in
    prepare) prepare ;;
    run) shift; run "$@" ;;
    unpack) shift; unpack "$@" ;;
    *) echo "usage: $0 prepare | run [FLAGS] | unpack DIR [DEST]" >&2; exit 2 ;;
esac
