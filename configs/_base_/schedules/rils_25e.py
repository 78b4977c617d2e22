# The paper recipe (SLIP lineage): AdamW (0.9, 0.98), eps 1e-8, weight decay 0.5 with none on
# biases, norms, q/v biases, position/class/mask embeddings and the logit scale; lr 5e-4 for a
# global batch of 4096 (scaled linearly by auto_scale_lr); one warm-up epoch, cosine to 1e-5;
# 25 epochs; mixed precision.
optim_wrapper = dict(
    type='AmpOptimWrapper',
    dtype='float16',
    loss_scale='dynamic',
    optimizer=dict(type='AdamW', lr=5e-4, betas=(0.9, 0.98), eps=1e-8, weight_decay=0.5),
    paramwise_cfg=dict(
        norm_decay_mult=0.0,
        bias_decay_mult=0.0,
        flat_decay_mult=0.0,
        custom_keys={
            'pos_embed': dict(decay_mult=0.0),
            'cls_token': dict(decay_mult=0.0),
            'mask_token': dict(decay_mult=0.0),
            'positional_embedding': dict(decay_mult=0.0),
            'logit_scale': dict(decay_mult=0.0),
        }))

param_scheduler = [
    dict(type='LinearLR', start_factor=1e-4, by_epoch=True, begin=0, end=1,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=24, eta_min=1e-5, by_epoch=True, begin=1, end=25,
         convert_to_iter_based=True),
]

train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=25)
auto_scale_lr = dict(base_batch_size=4096, enable=True)
