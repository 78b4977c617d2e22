# Stage 2 of MIM->CLIP (ViT-B/16): CLIP training whose image tower starts from the MAE stage's
# encoder (checked loading: a missing file or a missing encoder key fails, naming it). The
# chain tool sets the checkpoint to stage 1's last one; run alone, set it yourself:
#   # 4 nodes x 8 GPUs: on each node, NNODES=4 NODE_RANK=0..3 MASTER_ADDR=<node 0>
#   tools/dist_train.sh configs/two_stage/clip_from_mim_b16.py 8 \
#       --cfg-options model.backbone.init_cfg.checkpoint=work_dirs/.../epoch_25.pth
_base_ = ['../clip/pretrain_b16.py']

model = dict(
    backbone=dict(init_cfg=dict(_delete_=True, type='CheckedPretrained',
                                checkpoint='work_dirs/mim_to_clip_b16/mim/epoch_25.pth',
                                prefix='backbone.')))
