# RILS ViT-L/16 pretraining: the B/16 recipe (pretrain_b16.py) with the L/16 towers (encoder
# 1024 wide, 24 layers, 16 heads; text tower 768 wide, 12 heads; joint width 768).
#   # 4 nodes x 8 GPUs: on each node, NNODES=4 NODE_RANK=0..3 MASTER_ADDR=<node 0>
#   tools/dist_train.sh configs/rils/pretrain_l16.py 8
_base_ = [
    '../_base_/models/rils_vit-l16.py',
    '../_base_/datasets/laion_wds.py',
    '../_base_/schedules/rils_25e.py',
    '../_base_/default_runtime.py',
    '../_base_/datasets/imagenet_zero_shot_val.py',
]

# Gradient checkpointing in both towers keeps 128 pairs per GPU within 80 GB. Zero-shot
# ImageNet top-1/top-5 after every epoch, keeping the best checkpoint
# (configs/_base_/datasets/imagenet_zero_shot_val.py: data/imagenet/val, or --no-validate).
model = dict(zero_shot={{_base_.imagenet_zero_shot}},
             backbone=dict(with_cp=True), text_encoder=dict(with_cp=True))
train_dataloader = dict(batch_size=128, dataset=dict(batch_size=128))
default_hooks = dict(checkpoint=dict(save_best='accuracy/top1', rule='greater'))
