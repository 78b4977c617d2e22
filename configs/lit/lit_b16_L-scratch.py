# LiT, the paper's "Lu": the image tower pretrained and locked, the text tower from scratch, on
# the LAION shards with LiT's recipe (configs/_base_/schedules/lit_b16.py):
#   # 4 nodes x 8 GPUs: on each node, NNODES=4 NODE_RANK=0..3 MASTER_ADDR=<node 0>
#   tools/dist_train.sh configs/lit/lit_b16_L-scratch.py 8 --cfg-options \
#     model.backbone.init_cfg.checkpoint=work_dirs/rils_b16/epoch_25.pth
_base_ = [
    '../_base_/models/lit_vit-b16.py',
    '../_base_/datasets/laion_wds.py',
    '../_base_/schedules/lit_b16.py',
    '../_base_/default_runtime.py',
    '../_base_/datasets/imagenet_zero_shot_val.py',
]

# Zero-shot ImageNet top-1/top-5 after every epoch, keeping the best checkpoint
# (configs/_base_/datasets/imagenet_zero_shot_val.py: data/imagenet/val, or --no-validate).
model = dict(zero_shot={{_base_.imagenet_zero_shot}})
default_hooks = dict(checkpoint=dict(save_best='accuracy/top1', rule='greater'))

train_dataloader = dict(batch_size=128, dataset=dict(batch_size=128))
# The deterministic pipeline tools/cache_image_features.py runs the locked tower on.
cache_pipeline = [
    dict(type='LoadImageRGB', max_pixels=8192 * 8192, max_aspect_ratio=20.0, min_size=8),
    dict(type='ResizeEdge', scale=224, edge='short', interpolation='bicubic', backend='pillow'),
    dict(type='CenterCrop', crop_size=224),
    dict(type='PackImageText'),
]
