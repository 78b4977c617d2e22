# LiT's "uu": both towers from scratch -- CLIP training, with LiT's recipe and temperature.
_base_ = ['./lit_b16_L-scratch.py']

model = dict(
    backbone=dict(init_cfg=[
        dict(type='Xavier', layer='Linear', distribution='uniform'),
        dict(type='Constant', layer='LayerNorm', val=1.0, bias=0.0)]),
    lock_cfg=dict(_delete_=True))
