# MaMMUT at demo scale: the demo's image tower (configs/rils/demo_cpu.py) and a 4-block decoder
# of width 128 (cross-attention after blocks 2 and 4); it learns to caption the demo shapes:
#   python tools/train.py configs/mammut/demo_cpu.py
_base_ = [
    '../_base_/models/mammut_vit-b16.py',
    '../_base_/datasets/demo_shapes.py',
    '../_base_/schedules/demo_cpu.py',  # with the default runtime
]

model = dict(
    backbone=dict(
        arch=dict(_delete_=True, embed_dims=192, num_layers=4, num_heads=3,
                  feedforward_channels=768),
        img_size=64,
        patch_size=8),
    text_encoder=dict(width=128, heads=4, layers=4),
    embed_dims=128,
    max_caption_length=16)
optim_wrapper = dict(paramwise_cfg=dict(custom_keys={'logit_bias': dict(decay_mult=0.0)}))
