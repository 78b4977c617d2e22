# LiT "LU" from an OpenAI / open_clip ViT-B/16 CLIP: both towers from one open_clip file,
# converted once to this package's layout,
#   python tools/model_converters/open_clip_to_rils.py openai_vit_b16.pt \
#       checkpoints/openai_vit-b16_rils-layout.pth
# then the image tower locked (its head too, as open_clip's lock_image_tower does when
# lock_cfg.image_head=True) and the text tower tuned:
#   # 4 nodes x 8 GPUs: on each node, NNODES=4 NODE_RANK=0..3 MASTER_ADDR=<node 0>
#   tools/dist_train.sh configs/lit/lit_b16_L-U_openai.py 8
# The image tower is built as open_clip's: a norm before the blocks, LayerNorm eps 1e-5,
# QuickGELU (OpenAI's weights; drop layer_cfgs for open_clip's own GELU models), learned
# positions, the class token pooled and projected. The text tower is CLIP's, with QuickGELU.
_base_ = ['./lit_b16_L-U.py']

converted = 'checkpoints/openai_vit-b16_rils-layout.pth'
model = dict(
    backbone=dict(pre_norm=True, norm_cfg=dict(type='LN', eps=1e-5), fixed_pos_embed=False,
                  layer_cfgs=dict(act_cfg=dict(type='QuickGELU')),
                  init_cfg=dict(checkpoint=converted)),
    image_head=dict(pooling='cls_token',
                    init_cfg=dict(type='Pretrained', checkpoint=converted,
                                  prefix='image_head.')),
    text_encoder=dict(quick_gelu=True, init_cfg=dict(checkpoint=converted)))
