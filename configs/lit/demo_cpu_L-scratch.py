# LiT "Lu" at demo scale: the image tower of a demo RILS run (python tools/train.py
# configs/rils/demo_cpu.py --work-dir work_dirs/rils_demo) locked, the demo's text tower from scratch; the demo schedule with LiT's weight decay 0.01 and
# gradient clipping at norm 1 (big_vision's LiT recipe). The image head's projection starts
# from random values here and in every demo_cpu_*.py setting (only the tower's backbone.* keys
# are loaded from the RILS file, whose head maps into RILS's own joint space); it trains unless
# lock_cfg.image_head=True.
_base_ = [
    '../_base_/models/lit_vit-b16.py',
    '../_base_/datasets/demo_shapes.py',
    '../_base_/schedules/demo_cpu.py',  # with the default runtime
]

model = dict(
    backbone=dict(
        arch=dict(_delete_=True, embed_dims=192, num_layers=4, num_heads=3,
                  feedforward_channels=768),
        img_size=64,
        patch_size=8,
        init_cfg=dict(checkpoint='work_dirs/rils_demo/epoch_6.pth')),
    text_encoder=dict(width=128, heads=4, layers=3, quick_gelu=False),  # as the demo RILS's
    embed_dims=128)
optim_wrapper = dict(optimizer=dict(weight_decay=0.01), clip_grad=dict(max_norm=1.0))
# The deterministic pipeline tools/cache_image_features.py runs the locked tower on.
cache_pipeline = [
    dict(type='LoadImageRGB', min_size=8),
    dict(type='ResizeEdge', scale=64, edge='short', interpolation='bicubic', backend='pillow'),
    dict(type='CenterCrop', crop_size=64),
    dict(type='PackImageText'),
]
