# MAE ViT-B/16 on the images of the RILS shards, through mmpretrain's MAE classes
# (docs/methods/mae.md); the RILS recipe's data and 25-epoch schedule, captions unused:
#   # 4 nodes x 8 GPUs: on each node, NNODES=4 NODE_RANK=0..3 MASTER_ADDR=<node 0>
#   tools/dist_train.sh configs/mae/pretrain_b16.py 8
_base_ = [
    '../_base_/models/mae_vit-b16.py',
    '../_base_/datasets/laion_wds.py',
    '../_base_/schedules/rils_25e.py',
    '../_base_/default_runtime.py',
]

# The same crops as RILS, no tokenisation (the data preprocessor keeps the images only).
train_pipeline = [
    dict(type='LoadImageRGB', max_pixels=8192 * 8192, max_aspect_ratio=20.0, min_size=8),
    dict(type='RandomResizedCrop', scale=224, crop_ratio_range=(0.5, 1.0),
         interpolation='bicubic', backend='pillow'),
    dict(type='PackImageText'),
]
train_dataloader = dict(batch_size=128, dataset=dict(batch_size=128, pipeline=train_pipeline))
