# MAE+CLIP at demo scale: the demo towers and schedule, MAE's pixel decoder shrunk with them
# (2 blocks of width 128 for 8 px patches).
_base_ = [
    '../_base_/models/mae_clip_vit-b16.py',
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
    head=dict(patch_size=8),
    text_encoder=dict(width=128, heads=4, layers=3, quick_gelu=False),  # as the demo RILS's
    embed_dims=128)
