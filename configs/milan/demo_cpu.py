# MILAN at demo scale, taught by the demo CLIP (configs/clip/demo_cpu.py): run both with
#   python tools/run_chain.py configs/milan/demo_chain.py
# (or train the CLIP demo yourself and set model.target_generator.checkpoint).
_base_ = [
    '../_base_/models/milan_vit-b16.py',
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
              decoder_depth=2, decoder_num_heads=4, predict_feature_dim=128),
    target_generator=dict(
        _delete_=True,
        type='CLIPTeacher',
        # The demo CLIP's model (configs/clip/demo_cpu.py); checked loading fails if they differ.
        model=dict(
            type='ImageTextPretrainer',
            backbone=dict(type='RILSMaskedViT', arch=dict(embed_dims=192, num_layers=4,
                                                            num_heads=3,
                                                            feedforward_channels=768),
                          img_size=64, patch_size=8, out_type='raw'),
            text_encoder=dict(type='CLIPTextEncoder', width=128, heads=4, layers=3,
                              quick_gelu=False),
            embed_dims=128),
        checkpoint='work_dirs/milan_demo/clip/epoch_6.pth'))

train_pipeline = [
    dict(type='LoadImageRGB', min_size=8),
    dict(type='RandomResizedCrop', scale=64, crop_ratio_range=(0.5, 1.0),
         interpolation='bicubic', backend='pillow'),
    dict(type='PackImageText'),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
