# UperNet with a RILS ViT-B/16 backbone (the BEiT/MAE segmentation recipe): features of blocks
# 4, 6, 8, 12 rescaled x4, x2, x1, x0.5 by mmseg's Feature2Pyramid, UPerHead + FCN auxiliary
# head. The encoder comes from `tools/model_converters/rils_to_toolbox.py` (checked load).
_base_ = ['mmseg::_base_/models/upernet_mae.py']
custom_imports = dict(imports=['rils_mm'], allow_failed_imports=False)

input_size = (512, 512)  # 'crop_size' is the dataset base's name
pretrained_checkpoint = 'checkpoints/rils_vit-b16_encoder.pth'  # backbone.* state dict
num_classes = 150

model = dict(
    data_preprocessor=dict(
        mean=[122.770938, 116.7460125, 104.09373615],
        std=[68.5005327, 66.6321579, 70.32316305],
        size=input_size),
    backbone=dict(
        _delete_=True,
        type='RILSViT',
        arch='b',
        img_size=input_size,
        patch_size=16,
        out_indices=[3, 5, 7, 11],
        out_type='featmap',
        drop_path_rate=0.1,
        fixed_pos_embed=False,  # fine-tune the positions (fixed in pretraining)
        init_cfg=dict(type='CheckedPretrained', checkpoint=pretrained_checkpoint,
                      prefix='backbone.')),
    neck=dict(type='Feature2Pyramid', embed_dim=768, rescales=[4, 2, 1, 0.5]),
    decode_head=dict(in_channels=[768, 768, 768, 768], channels=768, num_classes=num_classes),
    auxiliary_head=dict(in_channels=768, num_classes=num_classes),
    test_cfg=dict(mode='slide', crop_size=input_size, stride=(341, 341)))
