# The RILS paper's CLIP baseline: RILS's towers without the decoder and the reconstruction
# objective -- a ViT-B/16 (q/v bias, fixed sin-cos positions), mean-pooled patch tokens and a
# bias-free projection into the joint space, the CLIP text tower of width 512, trained with the
# contrastive loss alone. docs/methods/clip.md.
model = dict(
    type='ImageTextPretrainer',
    backbone=dict(
        type='RILSMaskedViT',
        arch='b',
        img_size=224,
        patch_size=16,
        out_type='raw',
        init_cfg=[
            dict(type='Xavier', layer='Linear', distribution='uniform'),
            dict(type='Constant', layer='LayerNorm', val=1.0, bias=0.0),
        ]),
    image_head=dict(type='ImageEmbeddingHead', pooling='mean', projection_bias=False),
    text_encoder=dict(
        type='CLIPTextEncoder',
        context_length=77,
        vocab_size=49408,
        width=512,
        heads=8,
        layers=12),
    embed_dims=512,  # the joint width: the image head and the text tower take it from here
    loss_contrastive=dict(type='ContrastiveLoss', gather_with_grad=True),
    data_preprocessor=dict(type='ImageTextDataPreprocessor'))
