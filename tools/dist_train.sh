#!/usr/bin/env bash
# Distributed training with torchrun, OpenMMLab style:
#   tools/dist_train.sh CONFIG GPUS [train.py args...]
# Multi-node: NNODES, NODE_RANK, MASTER_ADDR and PORT from the environment. Without a GPU the
# same command runs GPUS CPU processes with the gloo backend.
set -euo pipefail
CONFIG=$1
GPUS=$2
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-"127.0.0.1"}
here=$(cd "$(dirname "$0")" && pwd)
# Default to the project environment when it exists.
[ -x "$here/../.venv/bin/python" ] && default_python="$here/../.venv/bin/python" || default_python=python
PYTHON=${PYTHON:-$default_python}

PYTHONPATH="$here/..${PYTHONPATH:+:$PYTHONPATH}" \
exec "$PYTHON" -m torch.distributed.run \
    --nnodes="$NNODES" \
    --node_rank="$NODE_RANK" \
    --master_addr="$MASTER_ADDR" \
    --nproc_per_node="$GPUS" \
    --master_port="$PORT" \
    "$here/train.py" \
    "$CONFIG" \
    --launcher pytorch "${@:3}"
