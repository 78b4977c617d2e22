# LiT "uu" at demo scale: both towers from scratch (CLIP with LiT's recipe).
_base_ = ['./demo_cpu_L-scratch.py']

model = dict(
    backbone=dict(init_cfg=[
        dict(type='Xavier', layer='Linear', distribution='uniform'),
        dict(type='Constant', layer='LayerNorm', val=1.0, bias=0.0)]),
    lock_cfg=dict(_delete_=True))
