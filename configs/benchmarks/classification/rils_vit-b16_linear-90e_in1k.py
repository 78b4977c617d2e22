# Linear probe of the RILS ViT-B/16 encoder on ImageNet-1k: mmpretrain's MAE linear-probe recipe
# (frozen encoder, BatchNorm neck, LARS lr 6.4 at batch 16384, 90 epochs, 10 warm-up), inherited
# from the installed mmpretrain configs. Features: the average of the patch tokens (what RILS's
# contrastive branch pools), not MAE's class token.
#   python tools/train.py configs/benchmarks/classification/rils_vit-b16_linear-90e_in1k.py \
#       --cfg-options model.backbone.init_cfg.checkpoint=work_dirs/rils/epoch_25.pth
# The encoder loads from the pretraining checkpoint's `backbone.*` through CheckedPretrained,
# which logs matched/missing/unexpected keys and fails when encoder weights are missing.
_base_ = 'mmpretrain::mae/benchmarks/vit-base-p16_8xb2048-linear-coslr-90e_in1k.py'

default_scope = 'mmpretrain'
custom_imports = dict(imports=['rils_mm'], allow_failed_imports=False)

# RILS is pretrained on CLIP-normalised RGB images.
data_preprocessor = dict(
    type='ClsDataPreprocessor',
    num_classes=1000,
    mean=[122.770938, 116.7460125, 104.09373615],
    std=[68.5005327, 66.6321579, 70.32316305],
    to_rgb=True)

model = dict(
    backbone=dict(
        type='RILSViT',
        arch='base',
        img_size=224,
        patch_size=16,
        frozen_stages=12,
        out_type='avg_featmap',
        final_norm=True,
        init_cfg=dict(
            type='CheckedPretrained',
            checkpoint='',
            prefix='backbone.',
            # The norm after pooling is not part of pretraining (MAE's fc_norm).
            ignore_missing=['ln2.*'])),
    data_preprocessor=data_preprocessor)
