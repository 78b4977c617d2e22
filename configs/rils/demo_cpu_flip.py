# The demo RILS (demo_cpu.py) made cheaper after FLIP: the intact pass encodes a random half
# of the 64 patches, the masked pass half of those, and the targets are the 16 patches the
# intact pass saw and the masked pass did not (pretrain_b16_flip.py explains the method).
_base_ = ['./demo_cpu.py']

model = dict(intact_keep_ratio=0.5, backbone=dict(mask_ratio=0.5))
