# The demo schedule (2 CPU cores, minutes): the paper's AdamW and parameter groups without AMP,
# a higher lr and lighter weight decay for a 64-pair batch and a short run, one warm-up epoch,
# cosine to 1e-5. It includes the default runtime, whose hooks it adjusts to the short run.
_base_ = ['../default_runtime.py', './rils_25e.py']

max_epochs = 6
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-3, betas=(0.9, 0.98), eps=1e-8, weight_decay=0.05),
    paramwise_cfg={{_base_.optim_wrapper.paramwise_cfg}})  # the paper recipe's groups
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=True, begin=0, end=1,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=max_epochs - 1, eta_min=1e-5, by_epoch=True, begin=1,
         end=max_epochs, convert_to_iter_based=True),
]
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs)
auto_scale_lr = dict(enable=False)
default_hooks = dict(logger=dict(interval=16), checkpoint=dict(interval=max_epochs))
