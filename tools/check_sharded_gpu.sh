#!/usr/bin/env bash
# FSDP (FlexibleRunner, configs/sharded/rils_demo_cpu_fsdp.py) against DDP (Runner,
# configs/rils/demo_cpu.py) on GPUs: the same tiny RILS, data and initial weights, 4 steps in
# GPUS processes under AMP, then the logged losses side by side (relative difference; AMP's
# low-precision sums are not bitwise across the two wrappers). The CPU test of the same pair is
# tests/test_engine/test_sharded_training.py.
#   tools/check_sharded_gpu.sh [GPUS=2] [AMP=bfloat16|float16|none] [WORK=work_dirs/check_sharded]
# AMP=none runs without AMP (also on the CPU, with gloo). OPTIONS (environment, space-separated
# key=value) are added to both runs' --cfg-options; its model.* keys also shape the initial
# weights (tools/analysis_tools/check_gpu.py shrinks the towers so for its CPU test).
set -euo pipefail
GPUS=${1:-2}
AMP=${2:-bfloat16}
WORK=${3:-work_dirs/check_sharded}
here=$(cd "$(dirname "$0")" && pwd)
PYTHON=${PYTHON:-$here/../.venv/bin/python}
cd "$here/.."
rm -rf "$WORK" && mkdir -p "$WORK"
read -r -a extra <<< "${OPTIONS:-}"
"$PYTHON" - "$WORK/initial.pth" "${extra[@]}" > "$WORK/initial.log" 2>&1 <<'EOF'
import sys
import torch
from mmengine.config import Config, DictAction
from mmengine.registry import DefaultScope
import rils_mm  # noqa: F401
from mmpretrain.registry import MODELS
DefaultScope.get_instance('check', scope_name='mmpretrain')
cfg = Config.fromfile('configs/rils/demo_cpu.py')
cfg.merge_from_dict({key: DictAction._parse_iterable(value) for key, value in
                     (option.split('=', 1) for option in sys.argv[2:])
                     if key.startswith('model.')})
torch.manual_seed(0)
model = MODELS.build(cfg.model)
model.init_weights()
torch.save(dict(state_dict=model.state_dict()), sys.argv[1])
EOF
options=(load_from="$WORK/initial.pth" train_cfg.max_epochs=1 train_dataloader.batch_size=16
         train_dataloader.dataset.batch_size=16 "train_dataloader.dataset.samples_per_epoch=$((64 * GPUS))"
         train_dataloader.num_workers=0 default_hooks.logger.interval=1
         train_dataloader.dataset.data_root="$WORK/shapes"
         "train_dataloader.dataset.generate_cfg.num_train=$((64 * GPUS))"
         train_dataloader.dataset.generate_cfg.num_val=8
         train_dataloader.dataset.generate_cfg.num_heldout=8 "${extra[@]}")
if [ "$AMP" != none ]; then
    scale=dynamic; [ "$AMP" = bfloat16 ] && scale=1.0
    options+=(optim_wrapper.type=AmpOptimWrapper "optim_wrapper.dtype=$AMP" "optim_wrapper.loss_scale=$scale")
fi
port=${PORT:-29600}
for run in ddp:configs/rils/demo_cpu.py fsdp:configs/sharded/rils_demo_cpu_fsdp.py; do
    PORT=$((port++)) PYTHON="$PYTHON" bash tools/dist_train.sh "${run#*:}" "$GPUS" \
        --work-dir "$WORK/${run%%:*}" --cfg-options "${options[@]}" > "$WORK/${run%%:*}.log" 2>&1 \
        || { tail -30 "$WORK/${run%%:*}.log"; exit 1; }
done
"$PYTHON" - "$WORK" "$AMP" <<'EOF'
import glob, json, sys
work, amp = sys.argv[1:]
def losses(run):
    (path, ) = glob.glob(f'{work}/{run}/*/vis_data/scalars.json')
    return [json.loads(line) for line in open(path)]
ddp, fsdp = losses('ddp'), losses('fsdp')
worst = 0.0
for a, b in zip(ddp, fsdp):
    diff = abs(a['loss'] - b['loss']) / max(abs(a['loss']), 1e-8)
    worst = max(worst, diff)
    print(f"step {a['step']}: DDP loss {a['loss']:.6f}  FSDP loss {b['loss']:.6f}  rel diff {diff:.2e}")
limit = 1e-5 if amp == 'none' else 2e-2
print(f'{"OK" if worst <= limit and len(ddp) == len(fsdp) > 0 else "FAIL"}: AMP {amp}, '
      f'largest relative difference {worst:.2e} (limit {limit:.0e})')
sys.exit(0 if worst <= limit and len(ddp) == len(fsdp) > 0 else 1)
EOF
