# LiT's recipe (big_vision configs/proj/image_text/lit_coco.py at commit 430df79, since renamed;
# Zhai et al., CVPR 2022) on the
# RILS schedule's parameter groups: batch 4096, Adam(W) lr 1e-3 with a warm-up then cosine decay
# to 0, weight decay 0.01 (big_vision's value; its optimizer's decay convention may differ from
# torch's AdamW, which scales it by the lr), gradient clipping at norm 1. The paper's runs see
# billions of examples; 5 epochs of the 20M-pair stream here is our choice.
_base_ = ['./rils_25e.py']

max_epochs = 5
optim_wrapper = dict(
    optimizer=dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01),
    clip_grad=dict(max_norm=1.0))
# big_vision warms up over max(3 % of the steps, 100): 5 epochs of 20M pairs at 4096 per step
# are 24,414 steps, so 750 warm-up steps; counted in iterations (change with the data size).
total_steps = 24_414
warmup_steps = 750
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=warmup_steps),
    dict(type='CosineAnnealingLR', T_max=total_steps - warmup_steps, eta_min=0.0,
         by_epoch=False, begin=warmup_steps, end=total_steps),
]
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs)
auto_scale_lr = dict(base_batch_size=4096, enable=True)
