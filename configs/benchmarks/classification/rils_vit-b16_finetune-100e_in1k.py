# End-to-end fine-tuning of the RILS ViT-B/16 encoder on ImageNet-1k: mmpretrain's MAE recipe
# (AdamW lr 2e-3 at batch 1024, layer-wise lr decay 0.65 through
# LearningRateDecayOptimWrapperConstructor, 100 epochs with 5 warm-up, drop path 0.1,
# RandAugment, Mixup/CutMix, label smoothing), inherited from the installed mmpretrain configs.
#   python tools/train.py configs/benchmarks/classification/rils_vit-b16_finetune-100e_in1k.py \
#       --cfg-options model.backbone.init_cfg.checkpoint=work_dirs/rils/epoch_25.pth
# The recipe's flat_decay_mult=0 also exempts RILSViT's q/v attention biases from weight decay.
_base_ = 'mmpretrain::mae/benchmarks/vit-base-p16_8xb128-coslr-100e_in1k.py'

default_scope = 'mmpretrain'
custom_imports = dict(imports=['rils_mm'], allow_failed_imports=False)

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
        drop_path_rate=0.1,
        out_type='avg_featmap',
        final_norm=False,
        init_cfg=dict(
            type='CheckedPretrained',
            checkpoint='',
            prefix='backbone.',
            ignore_missing=['ln2.*'])),
    data_preprocessor=data_preprocessor)

