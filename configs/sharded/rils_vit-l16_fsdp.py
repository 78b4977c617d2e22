# RILS ViT-L/16 (configs/rils/pretrain_l16.py: same model, data, schedule, fp16 AMP) with its
# parameters, gradients and AdamW state sharded over the GPUs by FSDP, through mmengine's
# FlexibleRunner (rils_mm/engine/strategies.py: one FSDP unit per transformer block, full
# checkpoints that tools/test.py and the converters read):
#   # 4 nodes x 8 GPUs: on each node, NNODES=4 NODE_RANK=0..3 MASTER_ADDR=<node 0>
#   tools/dist_train.sh configs/sharded/rils_vit-l16_fsdp.py 8
# The strategy recomputes every block in the backward pass (the towers' with_cp is turned off:
# one mechanism, which also covers the decoder). bf16 instead of fp16:
#   --cfg-options optim_wrapper.dtype=bfloat16 optim_wrapper.loss_scale=1.0
_base_ = ['../rils/pretrain_l16.py']

runner_type = 'FlexibleRunner'
strategy = dict(type='RILSFSDPStrategy', activation_checkpointing=True)
model = dict(backbone=dict(with_cp=False), text_encoder=dict(with_cp=False))
