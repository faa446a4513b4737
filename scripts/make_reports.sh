#!/usr/bin/env bash
# Regenerate the example reports in reports/ (README's "Reports" section points here):
#   resnet50 and mobilenet_v2 predicted on this machine's CPU (--hw auto, recalibrated just before
#   measuring, since this shared VM drifts: each layer alone and inside a pass) and measured on it
#   (alone and inside the pass);
#   GPT-2 predicted on the A100 and H100 datasheet profiles (fp16; not measured: no such GPU here).
# `hw measure` first saves a measured profile of this CPU in the user profile dir, which --hw auto
# prefers over the detected one (detection alone knows no memory bandwidths).
# Run from anywhere: scripts/make_reports.sh   (takes a few minutes on a 2-core CPU)
set -euo pipefail
cd "$(dirname "$0")/.."
roofline=.venv/bin/roofline

"$roofline" hw measure --no-progress > /dev/null
"$roofline" report torchvision:resnet50 --hw auto --recalibrate --out reports/resnet50-cpu
"$roofline" report torchvision:mobilenet_v2 --hw auto --recalibrate --out reports/mobilenet_v2-cpu
"$roofline" report hf:gpt2 --hw a100-80gb-sxm --precision fp16 --no-measure --out reports/gpt2-a100-fp16
"$roofline" report hf:gpt2 --hw h100-sxm --precision fp16 --no-measure --out reports/gpt2-h100-fp16
du -sh reports/*/
