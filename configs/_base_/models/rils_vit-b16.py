# RILS ViT-B/16 (METHOD.md, section 1): ViT-B/16 encoder with q/v bias and fixed sin-cos
# positions, a one-block decoder of the encoder's width, the CLIP text tower (width 512),
# a shared 768 -> 512 image projection, and the two losses weighted 1 : 0.5.
model = dict(
    type='RILS',
    backbone=dict(
        type='RILSViT',
        arch='b',
        img_size=224,
        patch_size=16,
        mask_ratio=0.75,
        out_type='raw',
        init_cfg=[
            dict(type='Xavier', layer='Linear', distribution='uniform'),
            dict(type='Constant', layer='LayerNorm', val=1.0, bias=0.0),
        ]),
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
    text_encoder=dict(
        type='CLIPTextEncoder',
        context_length=77,
        vocab_size=49408,
        width=512,
        heads=8,
        layers=12,
        output_dim=512),
    embed_dims=512,
    loss_contrastive=dict(type='ContrastiveLoss', gather_with_grad=True),
    loss_reconstruction=dict(
        type='LanguageSpaceReconstructionLoss',
        student_temperature=0.1,
        teacher_temperature=0.04,
        loss_weight=0.5,
        filter_correct=True,
        global_average=True),
    data_preprocessor=dict(type='ImageTextDataPreprocessor'))
