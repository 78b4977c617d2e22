# The README's demo: a small RILS pretrained on the generated demo_shapes pairs with 2 CPU
# cores in a few minutes, then evaluated zero-shot on held-out colour-shape combinations
# (tools/demo.py runs both steps; `make demo`).
_base_ = [
    '../_base_/models/rils_vit-b16.py',
    '../_base_/datasets/demo_shapes.py',
    '../_base_/schedules/demo_cpu.py',  # with the default runtime
]

# 64 px images in 8 px patches (8 x 8 = 64 patches); the same towers as the paper, smaller.
model = dict(
    backbone=dict(
        arch=dict(_delete_=True, embed_dims=192, num_layers=4, num_heads=3,
                  feedforward_channels=768),
        img_size=64,
        patch_size=8),
    neck=dict(num_patches=64, embed_dim=192, decoder_embed_dim=192, decoder_num_heads=3),
    # GELU in the text tower as in the image tower: open_clip builds both towers with one
    # activation, so the demo exports to open_clip (tools/model_converters/rils_to_open_clip.py).
    text_encoder=dict(width=128, heads=4, layers=3, quick_gelu=False),
    embed_dims=128)
