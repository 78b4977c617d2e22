# LiT "LU" (./lit_b16_L-U.py) trained from cached image features: the locked image tower runs
# once over the shards,
#   python tools/cache_image_features.py configs/lit/lit_b16_L-U.py --out data/laion_features \
#       --cfg-options model.backbone.init_cfg.checkpoint=work_dirs/rils_b16/epoch_25.pth
# and training reads its features instead of images (the same model, loss and gradients; no
# image is decoded and the image tower does not run):
#   # 4 nodes x 8 GPUs: on each node, NNODES=4 NODE_RANK=0..3 MASTER_ADDR=<node 0>
#   tools/dist_train.sh configs/lit/lit_b16_L-U_cached.py 8 --cfg-options \
#     model.backbone.init_cfg.checkpoint=work_dirs/rils_b16/epoch_25.pth
# Augmentation is necessarily off: every epoch sees the one view the cache was made from (see
# configs/_base_/datasets/laion_wds_cached_features.py).
_base_ = [
    '../_base_/models/lit_vit-b16.py',
    '../_base_/datasets/laion_wds_cached_features.py',
    '../_base_/schedules/lit_b16.py',
    '../_base_/default_runtime.py',
    '../_base_/datasets/imagenet_zero_shot_val.py',
]

# Zero-shot ImageNet top-1/top-5 after every epoch (the image tower encodes the val images),
# keeping the best checkpoint (configs/_base_/datasets/imagenet_zero_shot_val.py:
# data/imagenet/val, or --no-validate).
model = dict(
    zero_shot={{_base_.imagenet_zero_shot}},
    text_encoder=dict(init_cfg=dict(
        type='Pretrained', checkpoint='checkpoints/text_tower.pth', prefix='text_encoder.')))
default_hooks = dict(checkpoint=dict(save_best='accuracy/top1', rule='greater'))
