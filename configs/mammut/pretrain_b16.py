# MaMMUT ViT-B/16 on the RILS recipe (LAION shards, 25 epochs, batch 4096, AdamW):
#   # 4 nodes x 8 GPUs: on each node, NNODES=4 NODE_RANK=0..3 MASTER_ADDR=<node 0>
#   tools/dist_train.sh configs/mammut/pretrain_b16.py 8
_base_ = [
    '../_base_/models/mammut_vit-b16.py',
    '../_base_/datasets/laion_wds.py',
    '../_base_/schedules/rils_25e.py',
    '../_base_/default_runtime.py',
    '../_base_/datasets/imagenet_zero_shot_val.py',
]

# Zero-shot ImageNet top-1/top-5 after every epoch, keeping the best checkpoint
# (configs/_base_/datasets/imagenet_zero_shot_val.py: data/imagenet/val, or --no-validate).
model = dict(zero_shot={{_base_.imagenet_zero_shot}})
default_hooks = dict(checkpoint=dict(save_best='accuracy/top1', rule='greater'))

train_dataloader = dict(batch_size=128, dataset=dict(batch_size=128))
# The focal loss's bias joins the logit scale without weight decay.
optim_wrapper = dict(paramwise_cfg=dict(custom_keys={'logit_bias': dict(decay_mult=0.0)}))
