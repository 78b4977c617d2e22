# MILAN ViT-B/16 on ImageNet-1k (an mmpretrain ImageNet folder), the paper's 400-epoch recipe as
# mmpretrain's MILAN config gives it: AdamW (0.9, 0.95), weight decay 0.05, lr 1.5e-4 x 4096 /
# 256 at batch 4096, 40 warm-up epochs then cosine, crops (0.2, 1.0) and flips:
#   tools/dist_train.sh configs/milan/pretrain_b16.py 16
_base_ = [
    '../_base_/models/milan_vit-b16.py',
    'mmpretrain::_base_/datasets/imagenet_bs512_mae.py',
    '../_base_/default_runtime.py',
]

# mmpretrain's loader decodes BGR; the teacher expects RGB with CLIP's statistics.
model = dict(data_preprocessor=dict(to_rgb=True))
train_dataloader = dict(batch_size=256)
optim_wrapper = dict(
    type='AmpOptimWrapper',
    loss_scale='dynamic',
    optimizer=dict(type='AdamW', lr=1.5e-4 * 4096 / 256, betas=(0.9, 0.95),
                   weight_decay=0.05),
    paramwise_cfg=dict(
        custom_keys={
            'ln': dict(decay_mult=0.0),
            'bias': dict(decay_mult=0.0),
            'pos_embed': dict(decay_mult=0.),
            'mask_token': dict(decay_mult=0.),
            'cls_token': dict(decay_mult=0.)
        }))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-4, by_epoch=True, begin=0, end=40,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=360, by_epoch=True, begin=40, end=400,
         convert_to_iter_based=True),
]
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=400)
auto_scale_lr = dict(base_batch_size=4096)
