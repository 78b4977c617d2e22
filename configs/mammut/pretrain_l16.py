# MaMMUT ViT-L/16: the L/16 image tower and a decoder of the CLIP L text tower's size (width
# 768, 12 heads, 12 blocks), joint width 768:
#   # 4 nodes x 8 GPUs: on each node, NNODES=4 NODE_RANK=0..3 MASTER_ADDR=<node 0>
#   tools/dist_train.sh configs/mammut/pretrain_l16.py 8
_base_ = ['./pretrain_b16.py']

model = dict(
    backbone=dict(arch='l', with_cp=True),
    text_encoder=dict(width=768, heads=12),
    embed_dims=768)
