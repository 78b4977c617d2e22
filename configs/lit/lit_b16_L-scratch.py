# LiT, the paper's "Lu": the image tower pretrained and locked, the text tower from scratch, on
# the LAION shards. big_vision's LiT recipe (configs/proj/image_text/lit_coco.py): batch 4096,
# Adam(W) lr 1e-3 with cosine decay after a warm-up, weight decay 0.01 (big_vision's value; its
# optimizer's decay convention may differ from torch's AdamW, which scales it by the lr),
# gradient clipping at norm 1, temperature initialised to 10. The paper's recipes run for
# billions of examples; 5 epochs of the 20M-pair stream here is our choice.
#   tools/dist_train.sh configs/lit/lit_b16_L-scratch.py 32 --cfg-options \
#     model.backbone.init_cfg.checkpoint=work_dirs/rils_b16/epoch_25.pth
_base_ = [
    '../_base_/models/lit_vit-b16.py',
    '../_base_/datasets/laion_wds.py',
    '../_base_/schedules/rils_25e.py',
    '../_base_/default_runtime.py',
]

train_dataloader = dict(batch_size=128, dataset=dict(batch_size=128))
# The deterministic pipeline tools/cache_image_features.py runs the locked tower on.
cache_pipeline = [
    dict(type='LoadImageRGB', max_pixels=8192 * 8192, max_aspect_ratio=20.0, min_size=8),
    dict(type='ResizeEdge', scale=224, edge='short', interpolation='bicubic', backend='pillow'),
    dict(type='CenterCrop', crop_size=224),
    dict(type='PackImageText'),
]
max_epochs = 5
optim_wrapper = dict(
    optimizer=dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01),
    clip_grad=dict(max_norm=1.0))
# big_vision warms up over max(3 % of the steps, 100): 5 epochs of 20M pairs at 4096 per step
# are 24,414 steps, so 750 warm-up steps; counted in iterations (change with the data size).
total_steps = 24_414
warmup_steps = 750
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=warmup_steps),
    dict(type='CosineAnnealingLR', T_max=total_steps - warmup_steps, eta_min=0.0,
         by_epoch=False, begin=warmup_steps, end=total_steps),
]
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs)
auto_scale_lr = dict(base_batch_size=4096, enable=True)
