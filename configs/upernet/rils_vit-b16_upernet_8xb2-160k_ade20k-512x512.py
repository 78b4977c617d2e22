# UperNet on ADE20K at 512 x 512, mmseg's MAE recipe (mmseg::mae/mae-base_upernet_8xb2-amp-160k_
# ade20k-512x512.py): AdamW lr 1e-4, weight decay 0.05, layer-wise lr decay 0.65, 160k iterations
# at total batch 16 (8 GPUs x 2), linear warm-up 1500 iterations then poly decay, mixed
# precision. Multi-scale + flip testing: the -ms config. `python
# tools/analysis_tools/compare_recipes.py ade20k` prints the settings beside mmseg's.
_base_ = [
    '../_base_/models/upernet_rils_vit-b16.py',
    'mmseg::_base_/datasets/ade20k.py',
    'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_160k.py',
]
custom_imports = dict(imports=['rils_mm'], allow_failed_imports=False)
default_scope = 'mmseg'

# Mixed precision (on a CPU: --cfg-options optim_wrapper.type=OptimWrapper). No weight decay
# on every 1-D tensor (norms, all biases), as mmseg's LayerDecayOptimizerConstructor, nor on the
# position embedding and class token.
optim_wrapper = dict(
    _delete_=True,
    type='AmpOptimWrapper',  # loss scale: dynamic (its default)
    constructor='RILSLayerDecayOptimWrapperConstructor',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(
        layer_decay_rate=0.65,
        flat_decay_mult=0.,
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

# Why a setting differs from mmseg's MAE recipe (rows of tools/analysis_tools/compare_recipes.py).
recipe_notes = dict(
    wd_exemptions='1-D tensors as mmseg; pos_embed and cls_token too: mmseg means to exempt them '
    '(its test compares bare names with full ones such as backbone.pos_embed and never matches)',
    backbone_extras='not yet: per-block relative position bias and layer scale need RILSViT '
    'options (RILSViT is being refactored elsewhere); RILS checkpoints have neither',
    precision='AMP: mmseg trained its published MAE-B result in fp16 (metafile: '
    'upernet_mae-base_fp16); its config\'s fp16= key is mmcv 1.x, which mmengine does not read',
)
