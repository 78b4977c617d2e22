# RILS ViT-B/16 (METHOD.md, section 1): the CLIP baseline's towers (ViT-B/16 with q/v bias and
# fixed sin-cos positions, the CLIP text tower of width 512, a shared 768 -> 512 image
# projection) plus the masked pass, a one-block decoder of the encoder's width, and the
# language-space reconstruction loss, weighted 1 : 0.5 against the contrastive loss.
_base_ = ['./clip_vit-b16.py']

model = dict(
    type='RILS',
    backbone=dict(mask_ratio=0.75),
    neck=dict(
        type='RILSDecoder',
        num_patches=196,
        embed_dim=768,
        decoder_embed_dim=768,
        decoder_depth=1,
        decoder_num_heads=12,
        init_cfg=[
            dict(type='Xavier', layer='Linear', distribution='uniform'),
            dict(type='Constant', layer='LayerNorm', val=1.0, bias=0.0),
        ]),
    loss_reconstruction=dict(
        type='LanguageSpaceReconstructionLoss',
        student_temperature=0.1,
        teacher_temperature=0.04,
        loss_weight=0.5,
        filter_correct=True,
        global_average=True))
