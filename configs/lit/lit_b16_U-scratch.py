# LiT's "Uu": the image tower pretrained and trained, the text tower from scratch.
_base_ = ['./lit_b16_L-scratch.py']

model = dict(lock_cfg=dict(_delete_=True))
