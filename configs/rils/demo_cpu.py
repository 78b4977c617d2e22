# The README's demo: a small RILS pretrained on the generated demo_shapes pairs with 2 CPU
# cores in a few minutes, then evaluated zero-shot on held-out colour-shape combinations
# (tools/demo.py runs both steps; `make demo`).
_base_ = [
    '../_base_/models/rils_vit-b16.py',
    '../_base_/datasets/demo_shapes.py',
    '../_base_/schedules/rils_25e.py',
    '../_base_/default_runtime.py',
]

# 64 px images in 8 px patches (8 x 8 = 64 patches); the same towers as the paper, smaller.
model = dict(
    backbone=dict(
        arch=dict(_delete_=True, embed_dims=192, num_layers=4, num_heads=3,
                  feedforward_channels=768),
        img_size=64,
        patch_size=8),
    neck=dict(num_patches=64, embed_dim=192, decoder_embed_dim=192, decoder_num_heads=3),
    text_encoder=dict(width=128, heads=4, layers=3, output_dim=128),
    embed_dims=128)

# No AMP on the CPU; a higher lr and lighter weight decay for a 64-pair batch and a short run.
max_epochs = 6
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-3, betas=(0.9, 0.98), eps=1e-8, weight_decay=0.05),
    paramwise_cfg={{_base_.optim_wrapper.paramwise_cfg}})
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=True, begin=0, end=1,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=max_epochs - 1, eta_min=1e-5, by_epoch=True, begin=1,
         end=max_epochs, convert_to_iter_based=True),
]
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs)
auto_scale_lr = dict(enable=False)
default_hooks = dict(logger=dict(interval=16), checkpoint=dict(interval=max_epochs))
