# MAE at demo scale: the demo image tower and schedule (configs/rils/demo_cpu.py), MAE's pixel
# decoder shrunk with it (2 blocks of width 128 for 8 px patches), captions unused.
_base_ = [
    '../_base_/models/mae_vit-b16.py',
    '../_base_/datasets/demo_shapes.py',
    '../_base_/schedules/demo_cpu.py',  # with the default runtime
]

model = dict(
    backbone=dict(
        arch=dict(_delete_=True, embed_dims=192, num_layers=4, num_heads=3,
                  feedforward_channels=768),
        img_size=64,
        patch_size=8),
    neck=dict(num_patches=64, patch_size=8, embed_dim=192, decoder_embed_dim=128,
              decoder_depth=2, decoder_num_heads=4),
    head=dict(patch_size=8))

train_pipeline = [
    dict(type='LoadImageRGB', min_size=8),
    dict(type='RandomResizedCrop', scale=64, crop_ratio_range=(0.5, 1.0),
         interpolation='bicubic', backend='pillow'),
    dict(type='PackImageText'),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
