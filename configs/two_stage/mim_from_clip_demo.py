# Stage 2 of the demo-scale CLIP->MIM chain (configs/two_stage/clip_to_mim_demo.py).
_base_ = ['../mae/demo_cpu.py']

model = dict(
    backbone=dict(init_cfg=dict(type='CheckedPretrained',
                                checkpoint='work_dirs/clip_to_mim_demo/clip/epoch_6.pth',
                                prefix='backbone.')))
