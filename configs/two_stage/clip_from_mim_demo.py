# Stage 2 of the demo-scale MIM->CLIP chain (configs/two_stage/mim_to_clip_demo.py).
_base_ = ['../clip/demo_cpu.py']

model = dict(
    backbone=dict(init_cfg=dict(_delete_=True, type='CheckedPretrained',
                                checkpoint='work_dirs/mim_to_clip_demo/mim/epoch_6.pth',
                                prefix='backbone.')))
