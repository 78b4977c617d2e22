# MILAN ViT-L/16 on the images of the RILS shards: the B/16 LAION config with the L/16 encoder
# (width 1024, 24 blocks); the teacher stays CLIP ViT-B/16 (its 14 x 14 token grid matches the
# student's at 224 px), so the decoder still predicts 512-wide targets.
#   # 4 nodes x 8 GPUs: on each node, NNODES=4 NODE_RANK=0..3 MASTER_ADDR=<node 0>
#   tools/dist_train.sh configs/milan/pretrain_l16_laion.py 8
_base_ = ['./pretrain_b16_laion.py']

model = dict(backbone=dict(arch='l', with_cp=True), neck=dict(embed_dim=1024))
