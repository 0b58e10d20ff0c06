#!/usr/bin/env bash
# Runs on the GPU machine (through the device tool), once per shipped piece:
#   bash loadtests/gpu/device_run.sh N [bench args]
#   BENCH=loadtests.gpu.run_gpu_routing bash loadtests/gpu/device_run.sh N   # the routing run (issue 17)
# Each call stores the pieces it carried (.gpu/pK) in /tmp/ch, which survives while the machine
# stays warm; the call that completes the set of N pieces unpacks them and runs the benchmark.
set -euo pipefail
total=${1:?number of pieces}; shift
mkdir -p /tmp/ch
for piece in .gpu/p*/core_*; do [ -e "$piece" ] && cp "$piece" /tmp/ch/; done
have=$(find /tmp/ch -name "core_*" | wc -l)
echo "[device] pieces: $have/$total; $(nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader)"
[ "$have" -lt "$total" ] && exit 0
if [ ! -d /tmp/site/vllm ]; then
  mkdir -p /tmp/site && cat /tmp/ch/core_? | tar -C /tmp/site -xJ
  echo "[device] unpacked $(du -sh /tmp/site | cut -f1)"
fi
if ls .gpu/extra/*.whl >/dev/null 2>&1; then  # small extras carried beside a piece (py-spy for --profile)
  python3 - <<'PY'  # the device's python has no pip: a wheel is a zip; scripts go to /tmp/site/bin
import glob, os, zipfile
for wheel in glob.glob(".gpu/extra/*.whl"):
    with zipfile.ZipFile(wheel) as archive:
        for name in archive.namelist():
            target = os.path.join("/tmp/site/bin", os.path.basename(name)) if ".data/scripts/" in name else None
            archive.extract(name, "/tmp/site") if target is None else open(target, "wb").write(archive.read(name))
            if target: os.chmod(target, 0o755)
PY
fi
export PATH=/tmp/site/bin:$PATH
# Ray runs HAProxy through slmserve's wrapper (RAY_SERVE_HAPROXY_BINARY_PATH); the shipped site has
# no console scripts, so write the one the package would install.
printf '#!/usr/bin/env python3\nfrom services.haproxy.wrapper import main\nmain()\n' > /tmp/site/bin/slmserve-haproxy
chmod +x /tmp/site/bin/slmserve-haproxy
export PYTHONPATH=/tmp/site:$PWD VLLM_USE_FLASHINFER_SAMPLER=0 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
       VLLM_NO_USAGE_STATS=1 RAY_USAGE_STATS_ENABLED=0 PYTHONUNBUFFERED=1 SLMSERVE_CACHE_DIR=/tmp/slmcache
python3 -c "import vllm, ray, torch; print('[device] vllm', vllm.__version__, 'ray', ray.__version__, 'torch', torch.__version__)"
python3 -m "${BENCH:-loadtests.gpu.run_gpu_bench}" --out "${OUT:-out}" "$@"
