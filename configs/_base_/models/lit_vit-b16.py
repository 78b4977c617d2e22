# LiT ViT-B/16 (Zhai et al., CVPR 2022, arXiv:2111.07991): CLIP's towers and contrastive loss,
# the image tower pretrained and locked, the text tower trained. The settings of the paper's
# Figure 3 (L: pretrained and locked, U: pretrained and trained, u: from scratch) are the files
# of configs/lit/. The image tower loads any of this package's checkpoints (RILS, MILAN, MAE,
# CLIP) or an open_clip / OpenAI file converted by tools/model_converters/open_clip_to_rils.py,
# through the checked loader: a missing file or a tower key absent from it stops the run.
_base_ = ['./clip_vit-b16.py']

model = dict(
    type='LiT',
    backbone=dict(init_cfg=dict(_delete_=True, type='Pretrained',
                                checkpoint='checkpoints/image_tower.pth',
                                prefix='backbone.')),
    # Trained on the locked tower by default (lock_cfg.image_head=True locks it too); mean
    # pooling has no parameters, so a locked tower's pooled features can be cached. The head's
    # projection STARTS FROM RANDOM VALUES (CLIP's init), also where the image tower comes from
    # a file: only backbone.* is loaded. To start it from a file's image_head.* (same widths),
    # set image_head.init_cfg=dict(type='Pretrained', checkpoint=..., prefix='image_head.') as
    # lit_b16_L-U_openai.py does; lit_b16_L-U_no-projection.py has no head (big_vision's LiT).
    image_head=dict(type='ImageEmbeddingHead', pooling='mean', projection_bias=False),
    # big_vision's LiT: temperature_init 10 (configs/proj/image_text/lit_coco.py at commit
    # 430df79): ln(10).
    logit_scale_init=2.302585092994046,
    lock_cfg=dict(backbone=True))
