# ViTDet recipe on COCO: LSJ at 1024 x 1024, AdamW lr 1e-4, weight decay 0.1 (none on norms
# and positions), layer-wise lr decay 0.7, 100 epochs at total batch 64 (16 GPUs x 4).
# mmdet's LSJ base expresses 100 epochs as 25 epochs of RepeatDataset(times=4); ViTDet's
# 184375 iterations at batch 64 are the same length. Step decay at 88.9% and 96.3% of training
# (epochs 22 and 24 of 25), warm-up 250 iterations.
_base_ = [
    '../_base_/models/mask_rcnn_rils_vit-b16_vitdet.py',
    'mmdet::common/lsj-100e_coco-instance.py',
]
custom_imports = dict(imports=['rils_mm'], allow_failed_imports=False)
default_scope = 'mmdet'

image_size = (1024, 1024)
backend_args = None
test_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='Resize', scale=image_size, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))
]
# mmdet batches with pseudo_collate (stated, because rils_mm's tools default to mmpretrain's
# default_collate when a config names none).
train_dataloader = dict(batch_size=4, num_workers=4, collate_fn=dict(type='pseudo_collate'))
val_dataloader = dict(
    collate_fn=dict(type='pseudo_collate'), dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',  # tools/train.py --amp switches to AmpOptimWrapper on GPUs
    constructor='RILSLayerDecayOptimWrapperConstructor',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.1),
    paramwise_cfg=dict(
        layer_decay_rate=0.7,
        norm_decay_mult=0.,
        custom_keys={'.pos_embed': dict(decay_mult=0.)}))

max_epochs = 25
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=5)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=250),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[22, 24],
         gamma=0.1)
]
auto_scale_lr = dict(base_batch_size=64)
