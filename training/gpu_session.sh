#!/usr/bin/env bash
# One prepared run for a session that is lent a GPU (a few minutes of it): GPU speed figures
# first, then full-width training of both networks in a fixed time per stage, then their
# validation scores next to classical, and last the speed under torch.compile. Everything it
# makes lands in OUT (weights, logs).
#
#   training/gpu_session.sh OUT [MINUTES_PER_STAGE=1.25]
#
# The device image has torch, OpenCV, scikit-image and safetensors but not OpenEXR: carry
# its wheel (.whl/, see the device tool's README) and install it to PYTHONPATH first.
#
# Env: WIDTH (1.0), DEVICE (cuda), SIZES for bench/speed.py, SET (extra --set overrides,
# e.g. "--set batch_size=16"). A dry run on a CPU: DEVICE=cpu WIDTH=0.125 SIZES=128x96
# training/gpu_session.sh /tmp/dry 0.05
set -euo pipefail
out=${1:?usage: training/gpu_session.sh OUT [MINUTES_PER_STAGE]}
minutes=${2:-1.25}
width=${WIDTH:-1.0}
device=${DEVICE:-cuda}
sizes=${SIZES:-1280x720,1536x813,1920x1080,4096x2160}
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
mkdir -p "$out"
read -r -a extra <<< "${SET:-}"

echo "== speed: shipped networks, then the full-width one (untrained: speed only)"
for n in 2 3; do
    $py bench/speed.py --device "$device" --weights "infer/weights/hdrnet-${n}exp.safetensors" --sizes "$sizes"
done
$py bench/speed.py --device "$device" --width "$width" --sizes "$sizes"

for n in 2 3; do
    echo "== train ${n} exposures: coarse, then refine, ${minutes} min each, width ${width}"
    common=(--set flow=dis --set width="$width" --set device="$device" --set max_minutes="$minutes"
            --set val_size=32 --set val_crop=128 --no-progress "${extra[@]}")
    $py -m training --config "coarse${n}" "${common[@]}" --out "$out/coarse${n}"
    $py -m training --config "refine${n}" "${common[@]}" --init "$out/coarse${n}/best.safetensors" \
        --out "$out/refine${n}"
    cp "$out/refine${n}/best.safetensors" "$out/hdrnet-${n}exp.safetensors"
    echo "== quality ${n} exposures (validation sequences), these weights vs classical"
    $py bench/quality.py --exposures "$n" --seeds 2 --methods classical,coarse,net \
        --weights "$out/hdrnet-${n}exp.safetensors"
done

echo "== speed under torch.compile (last: compiling may take minutes; on the 2-core CPU it was slower)"
$py bench/speed.py --device "$device" --width "$width" --sizes "${sizes%%,*}" --compile
