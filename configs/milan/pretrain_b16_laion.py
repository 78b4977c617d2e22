# MILAN ViT-B/16 on the images of the RILS shards, with the RILS recipe's data and 25-epoch
# schedule (captions unused), so that it compares with RILS on the same data:
#   # 4 nodes x 8 GPUs: on each node, NNODES=4 NODE_RANK=0..3 MASTER_ADDR=<node 0>
#   tools/dist_train.sh configs/milan/pretrain_b16_laion.py 8
# The teacher file is set in configs/_base_/models/milan_vit-b16.py
# (model.target_generator.model.pretrained).
_base_ = [
    '../_base_/models/milan_vit-b16.py',
    '../_base_/datasets/laion_wds.py',
    '../_base_/schedules/rils_25e.py',
    '../_base_/default_runtime.py',
]

train_pipeline = [
    dict(type='LoadImageRGB', max_pixels=8192 * 8192, max_aspect_ratio=20.0, min_size=8),
    dict(type='RandomResizedCrop', scale=224, crop_ratio_range=(0.5, 1.0),
         interpolation='bicubic', backend='pillow'),
    dict(type='PackImageText'),
]
train_dataloader = dict(batch_size=128, dataset=dict(batch_size=128, pipeline=train_pipeline))
# The teacher's parameters never receive a gradient.
find_unused_parameters = False
