# FLIP's unmasked phase for the cheaper RILS (pretrain_b16_flip.py): a short run of plain RILS
# (every patch in the intact pass, 75 % masking) starting from the whole patch-dropped model,
# so that the encoder meets full images before transfer (FLIP tunes without masking for a
# fraction of an epoch). One nominal epoch of the stream, a tenth of the pretraining lr, a
# short warm-up then cosine: our choice of length and lr, not FLIP's.
#   # 4 nodes x 8 GPUs: on each node, NNODES=4 NODE_RANK=0..3 MASTER_ADDR=<node 0>
#   tools/dist_train.sh configs/rils/pretrain_b16_flip_unmasked.py 8 \
#       --cfg-options model.init_cfg.checkpoint=work_dirs/pretrain_b16_flip/epoch_25.pth
_base_ = ['./pretrain_b16.py']

model = dict(
    intact_keep_ratio=1.0,
    # The whole model (towers, decoder, logit scale) from the patch-dropped run; every key
    # must match.
    init_cfg=dict(type='CheckedPretrained',
                  checkpoint='work_dirs/pretrain_b16_flip/epoch_25.pth'))
optim_wrapper = dict(optimizer=dict(lr=5e-5))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-2, by_epoch=True, begin=0, end=0.1,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=0.9, eta_min=1e-6, by_epoch=True, begin=0.1, end=1,
         convert_to_iter_based=True),
]
train_cfg = dict(max_epochs=1)
