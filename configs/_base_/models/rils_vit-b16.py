# RILS ViT-B/16 (Yang et al., 2023; docs/methods/rils.md): the CLIP baseline's towers plus the
# masked pass, a one-block decoder of the encoder's width, and reconstruction scored against
# the batch's captions in the joint space, weighted 1 : 0.5 against the contrastive loss.
_base_ = ['./clip_vit-b16.py']

model = dict(
    type='RILS',
    backbone=dict(type='RILSMultiPassViT', mask_ratio=0.75),
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
    head=dict(
        type='LanguageReconstructionHead',
        prototypes=dict(type='CaptionPrototypes'),
        loss=dict(
            type='LanguageSpaceReconstructionLoss',
            student_temperature=0.1,
            teacher_temperature=0.04,
            loss_weight=0.5,
            filter_correct=True,
            global_average=True)))
