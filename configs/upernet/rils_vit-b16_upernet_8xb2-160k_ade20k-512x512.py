# UperNet on ADE20K at 512 x 512: AdamW lr 1e-4, weight decay 0.05, layer-wise lr decay 0.65,
# 160k iterations at total batch 16 (8 GPUs x 2), linear warm-up 1500 iterations then poly decay.
_base_ = [
    '../_base_/models/upernet_rils_vit-b16.py',
    'mmseg::_base_/datasets/ade20k.py',
    'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_160k.py',
]
custom_imports = dict(imports=['rils_mm'], allow_failed_imports=False)
default_scope = 'mmseg'

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',  # tools/train.py --amp switches to AmpOptimWrapper on GPUs
    constructor='RILSLayerDecayOptimWrapperConstructor',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(
        layer_decay_rate=0.65,
        norm_decay_mult=0.,
        custom_keys={'.pos_embed': dict(decay_mult=0.), '.cls_token': dict(decay_mult=0.)}))

param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=1500, end=160000, by_epoch=False)
]
# mmseg batches with pseudo_collate (stated, because rils_mm's tools default to mmpretrain's
# default_collate when a config names none).
train_dataloader = dict(batch_size=2, collate_fn=dict(type='pseudo_collate'))
val_dataloader = dict(batch_size=1, collate_fn=dict(type='pseudo_collate'))
test_dataloader = val_dataloader
