# LiT "UU" at demo scale: both towers pretrained (as demo_cpu_L-U.py) and both trained.
_base_ = ['./demo_cpu_L-U.py']

model = dict(lock_cfg=dict(_delete_=True))
