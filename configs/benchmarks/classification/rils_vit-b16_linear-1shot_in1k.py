# 1-shot ImageNet-1k linear probe; see rils_vit-b16_linear-10shot_in1k.py.
_base_ = './rils_vit-b16_linear-10shot_in1k.py'

shots = 1
train_dataloader = dict(dataset=dict(shots=shots))
