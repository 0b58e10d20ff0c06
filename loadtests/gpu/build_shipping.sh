#!/usr/bin/env bash
# Builds what the GPU machine lacks (it has no network): vLLM 0.24.0 (the release that matches
# its torch 2.11 + CUDA 13), ray[serve] 2.60.0 and their missing dependencies, as one xz tarball
# cut into pieces under 64 MiB (the device tool carries 64 MiB per run). slmserve itself is not in
# it: the device runs the working tree that travels with each call (loadtests/gpu/device_run.sh).
# Output: .gpu/p0/core_0 ... .gpu/pN/core_N (ignored by git; the steps: docs/benchmarks.md, GPU).
set -euo pipefail
cd "$(dirname "$0")/../.."
out=.gpu
rm -rf "$out" && mkdir -p "$out/whl" "$out/site"
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
platform=(--only-binary=:all: --python-version 3.12 --implementation cp)
for tag in manylinux_2_31 manylinux_2_28 manylinux_2_27 manylinux_2_26 manylinux_2_24 manylinux_2_17 manylinux2014 manylinux1 manylinux_2_5; do
  platform+=(--platform "${tag}_x86_64")
done
read -r -a pins <<< "$(grep -v '^#' loadtests/gpu/pins.txt | tr '\n' ' ')"
echo "[ship] downloading wheels"
python3 -m pip download --quiet --no-deps "${platform[@]}" -d "$out/whl" "${pins[@]}"
echo "[ship] unpacking $(find "$out/whl" -name '*.whl' | wc -l) wheels"
python3 -m pip install --quiet --no-index --no-deps --no-compile "${platform[@]}" --target "$out/site" "$out"/whl/*.whl
rm -f "$out"/site/vllm/vllm_flash_attn/_vllm_fa2_C.abi3.so   # H100/H200 use FlashAttention 3
rm -rf "$out"/site/ray/core/src/ray/raylet/*.debug "$out"/site/ray/jars 2>/dev/null || true
echo "[ship] compressing ($(du -sh "$out/site" | cut -f1))"
tar -C "$out/site" --sort=name -cf - . | xz -T0 -6 > "$out/core.tar.xz"
split -b 60M -d -a 1 "$out/core.tar.xz" "$out/core_"
for piece in "$out"/core_?; do
  index=${piece##*_}; mkdir -p "$out/p$index"; mv "$piece" "$out/p$index/"
done
rm -rf "$out/site" "$out/whl" "$out/core.tar.xz"
ls -la "$out"/p*/
