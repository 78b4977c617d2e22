# Stage 2 of CLIP->MIM (ViT-B/16): MAE training whose encoder starts from the CLIP stage's
# image tower (checked loading). The chain tool sets the checkpoint to stage 1's last one.
_base_ = ['../mae/pretrain_b16.py']

model = dict(
    backbone=dict(init_cfg=dict(type='CheckedPretrained',
                                checkpoint='work_dirs/clip_to_mim_b16/clip/epoch_25.pth',
                                prefix='backbone.')))
