#!/usr/bin/env bash
# Create (or reuse) the project environment in .venv at the repository root.
#
# Idempotent: a stamp file records a hash of this script and the requirement files, so a warm
# machine does nothing. The slow part, building mmcv 2.1.0 with its compiled ops, is done once
# and the wheel is kept in $RILS_MM_CACHE (default ~/.cache/rils_mm), keyed by the Python and
# torch versions; later installs reuse that wheel. Only registry packages are downloaded.
#
# Environment knobs:
#   PYTHON          interpreter used to create the venv (default: python3)
#   VENV            environment folder (default: <repo>/.venv)
#   RILS_MM_CACHE   where the built mmcv wheel is kept (default: ~/.cache/rils_mm)
#   TORCH_SPEC      torch requirement (default: torch==2.14.1 torchvision==0.29.1)
#   MAX_JOBS        parallel compile jobs for mmcv (default: number of cores)
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=${PYTHON:-python3}
venv=${VENV:-$repo/.venv}
cache=${RILS_MM_CACHE:-$HOME/.cache/rils_mm}
torch_spec=${TORCH_SPEC:-"torch==2.14.1 torchvision==0.29.1"}
mmcv_version=2.1.0

stamp_src=$(cat "$repo/tools/setup_env.sh" "$repo/requirements/"*.txt "$repo/setup.py"; echo "$torch_spec")
stamp=$(printf '%s' "$stamp_src" | sha256sum | cut -c1-16)
if [ -f "$venv/.rils_mm_stamp" ] && [ "$(cat "$venv/.rils_mm_stamp")" = "$stamp" ]; then
    echo "[setup_env] $venv is up to date"
    exit 0
fi

log() { echo "[setup_env $(date +%H:%M:%S)] $*"; }
start=$(date +%s)

if [ ! -x "$venv/bin/python" ]; then
    log "creating $venv with $($python --version)"
    "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip)
"${pip[@]}" install -q --upgrade pip

log "installing $torch_spec"
# shellcheck disable=SC2086
"${pip[@]}" install -q $torch_spec
# torch brings a setuptools without pkg_resources; mmcv's build and mmengine's `mmdet::`
# config inheritance both import it.
"${pip[@]}" install -q 'setuptools<81' wheel ninja psutil

py_tag=$("$venv/bin/python" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
torch_tag=$("$venv/bin/python" -c 'import torch; print(torch.__version__.replace("+", "_"))')
wheel_dir="$cache/wheels/mmcv-$mmcv_version-$py_tag-torch$torch_tag"
if ! ls "$wheel_dir"/mmcv-$mmcv_version-*.whl >/dev/null 2>&1; then
    log "building mmcv $mmcv_version with ops (once; most of the 14 minutes a first set-up takes on 2 cores)"
    build=$(mktemp -d)
    "${pip[@]}" download -q --no-deps --no-binary=:all: --no-build-isolation -d "$build" "mmcv==$mmcv_version"
    tar -xzf "$build"/mmcv-$mmcv_version.tar.gz -C "$build"
    # torch >= 2.10 headers need C++20; mmcv's setup.py appends -std=c++17 after user flags.
    sed -i "s/'-std=c++17'/'-std=c++20'/g" "$build/mmcv-$mmcv_version/setup.py"
    mkdir -p "$wheel_dir"
    MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} CFLAGS="-O1 -g0" CXXFLAGS="-O1 -g0" \
        "${pip[@]}" wheel -q --no-build-isolation --no-deps -w "$build/dist" "$build/mmcv-$mmcv_version"
    # Move into place only when complete, so an interrupted build is never reused.
    mv "$build"/dist/mmcv-$mmcv_version-*.whl "$wheel_dir/"
    rm -rf "$build"
fi
log "installing mmcv from $wheel_dir"
"${pip[@]}" install -q --no-deps "$wheel_dir"/mmcv-$mmcv_version-*.whl
# mmcv's own runtime requirements (installed with --no-deps above).
"${pip[@]}" install -q addict packaging pyyaml yapf

log "installing runtime and test requirements"
"${pip[@]}" install -q -r "$repo/requirements/runtime.txt" -r "$repo/requirements/tests.txt"
# Without its transformers requirement: see requirements/tests.txt.
"${pip[@]}" install -q --no-deps clip-benchmark==1.6.2
"${pip[@]}" install -q --no-deps --no-build-isolation -e "$repo"

"$venv/bin/python" - <<'EOF'
import mmcv, mmdet, mmengine, mmpretrain, mmseg, open_clip, torch
from mmcv.ops import nms, RoIAlign  # noqa: F401  compiled ops present
print('[setup_env] torch', torch.__version__, '| mmengine', mmengine.__version__,
      '| mmcv', mmcv.__version__, '| mmpretrain', mmpretrain.__version__,
      '| mmdet', mmdet.__version__, '| mmseg', mmseg.__version__,
      '| open_clip', open_clip.__version__)
EOF
echo "$stamp" > "$venv/.rils_mm_stamp"
log "done in $(( $(date +%s) - start )) s"
