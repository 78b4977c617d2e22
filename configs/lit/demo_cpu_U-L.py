# LiT "UL" at demo scale: the pretrained text tower locked, the pretrained image tower trained.
_base_ = ['./demo_cpu_L-U.py']

model = dict(lock_cfg=dict(_delete_=True, text_encoder=True))
