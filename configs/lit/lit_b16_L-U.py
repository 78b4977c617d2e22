# LiT, the paper's "LU" (its best setting): the image tower pretrained and locked, the text
# tower pretrained and trained. Set the two files (or override them on the command line):
#   # 4 nodes x 8 GPUs: on each node, NNODES=4 NODE_RANK=0..3 MASTER_ADDR=<node 0>
#   tools/dist_train.sh configs/lit/lit_b16_L-U.py 8 --cfg-options \
#     model.backbone.init_cfg.checkpoint=work_dirs/rils_b16/epoch_25.pth \
#     model.text_encoder.init_cfg.checkpoint=checkpoints/open_clip_b16_rils-format.pth
# The text file: any of this package's image-text checkpoints, or an open_clip file converted
# by tools/model_converters/open_clip_to_rils.py (its text tower keys start with
# "text_encoder."). The data, schedule and cached-feature variant: ./lit_b16_L-scratch.py.
_base_ = ['./lit_b16_L-scratch.py']

model = dict(text_encoder=dict(init_cfg=dict(
    type='Pretrained', checkpoint='checkpoints/text_tower.pth', prefix='text_encoder.')))
