# The CLIP baseline at demo scale: the demo RILS's towers and schedule (configs/rils/demo_cpu.py)
# without the decoder and the reconstruction objective.
_base_ = [
    '../_base_/models/clip_vit-b16.py',
    '../_base_/datasets/demo_shapes.py',
    '../_base_/schedules/demo_cpu.py',  # with the default runtime
]

model = dict(
    backbone=dict(
        arch=dict(_delete_=True, embed_dims=192, num_layers=4, num_heads=3,
                  feedforward_channels=768),
        img_size=64,
        patch_size=8),
    text_encoder=dict(width=128, heads=4, layers=3, quick_gelu=False),  # as the demo RILS's
    embed_dims=128)
