#!/usr/bin/env bash
# Wheels that bench/device_check.sh needs on a GPU machine that has Python 3.12 with torch,
# transformers, OpenCV and tqdm but not the rest of vrs_node's dependencies, and no network
# (the lent H200 image; /work/.library/device/KINDS.md lists what it holds). Written to .whl/
# (git-ignored through .git/info/exclude): about 46 MB, inside the 64 MiB a device call carries.
# Then: VRS_WHEELS=.whl bench/device_check.sh --out-dir "$OUT"   (carry: .whl)
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
rm -rf .whl && mkdir .whl
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64
           --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" -d .whl hydra-core==1.3.8 omegaconf==2.3.1 open_clip_torch==3.3.0 \
  ftfy==6.3.1 wcwidth==0.9.4 bitsandbytes==0.50.2
# sam2, iopath 0.1.10 and antlr4 (hydra's parser) exist only as source distributions: pure Python, built here.
SAM2_BUILD_CUDA=0 python3 -m pip wheel -q --no-deps --no-build-isolation -w .whl sam2==1.1.0 iopath==0.1.10 \
  antlr4-python3-runtime==4.9.3
du -sh .whl && ls .whl
