# The vision-space ablation at demo scale (configs/rils/pretrain_b16_vision-space.py): K = 64
# fixed random prototypes, the demo batch's number of captions.
_base_ = ['./demo_cpu.py']

model = dict(
    head=dict(prototypes=dict(_delete_=True, type='RandomPrototypes', num_prototypes=64,
                              seed=0)))
