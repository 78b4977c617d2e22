# LiT "Uu" at demo scale: the pretrained image tower trained, the text tower from scratch.
_base_ = ['./demo_cpu_L-scratch.py']

model = dict(lock_cfg=dict(_delete_=True))
