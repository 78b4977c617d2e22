# LiT's "UU": both towers start from pretrained weights and both train (image tower included,
# so its features cannot be cached). Files as in ./lit_b16_L-U.py.
_base_ = ['./lit_b16_L-U.py']

model = dict(lock_cfg=dict(_delete_=True))
