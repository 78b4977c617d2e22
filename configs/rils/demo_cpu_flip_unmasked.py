# The demo of FLIP's unmasked phase (pretrain_b16_flip_unmasked.py): plain demo RILS from the
# whole patch-dropped demo model, one epoch at a tenth of the demo lr, a quarter-epoch warm-up then cosine. Run by
# demo_flip_chain.py, which fills in the first stage's checkpoint.
_base_ = ['./demo_cpu.py']

model = dict(
    intact_keep_ratio=1.0,
    init_cfg=dict(type='CheckedPretrained',
                  checkpoint='work_dirs/rils_flip_demo/flip/epoch_6.pth'))
optim_wrapper = dict(optimizer=dict(lr=1e-4))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=True, begin=0, end=0.25,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=0.75, eta_min=1e-6, by_epoch=True, begin=0.25, end=1,
         convert_to_iter_based=True),
]
train_cfg = dict(max_epochs=1)
default_hooks = dict(checkpoint=dict(interval=1))
