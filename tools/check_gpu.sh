#!/usr/bin/env bash
# Is this project ready for a GPU? One command, one table, exit status 1 on any failed row:
# every pretraining config trains under bf16 and fp16 AMP with a finite, falling loss; DDP
# (NCCL, every visible GPU) equals one process; FSDP equals DDP (tools/check_sharded_gpu.sh);
# contrastive accumulation equals one step on the whole batch; and the step-time table of
# tools/benchmark_train.py --amp bf16 --batch-size 128. About 8 minutes on one H100 (an
# estimate: it has not run on a GPU yet). Options: tools/analysis_tools/check_gpu.py --help.
#   tools/check_gpu.sh [--quick] [--only amp,ddp,fsdp,accum,bench] [--out report.json]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# Default to the project environment when it exists.
[ -x "$here/../.venv/bin/python" ] && default_python="$here/../.venv/bin/python" || default_python=python
PYTHON=${PYTHON:-$default_python}
PYTHONPATH="$here/..${PYTHONPATH:+:$PYTHONPATH}" \
exec "$PYTHON" "$here/analysis_tools/check_gpu.py" "$@"
