# RILS ViT-B/16 pretraining, the paper recipe (Yang et al., CVPR 2023, arXiv:2301.06958):
#   # 4 nodes x 8 GPUs: on each node, NNODES=4 NODE_RANK=0..3 MASTER_ADDR=<node 0>
#   tools/dist_train.sh configs/rils/pretrain_b16.py 8
# LAION image-text shards (img2dataset layout) under data/laion; 128 pairs per GPU on 32 GPUs
# = global batch 4096; AdamW (0.9, 0.98), wd 0.5, lr 5e-4 at 4096 (auto-scaled), 1 warm-up
# epoch then cosine to 1e-5, 25 epochs, AMP.
_base_ = [
    '../_base_/models/rils_vit-b16.py',
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
