# The paper's CLIP baseline (METHOD.md, section 2): RILS's towers without the decoder and the
# reconstruction loss -- a ViT-B/16 (q/v bias, sin-cos positions, mean-pooled patch tokens)
# and the CLIP text tower, trained with the contrastive loss alone.
model = dict(
    type='ImageTextPretrainer',
    backbone=dict(
        type='RILSViT',
        arch='b',
        img_size=224,
        patch_size=16,
        out_type='raw',
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
    data_preprocessor=dict(type='ImageTextDataPreprocessor'))
