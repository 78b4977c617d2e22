# MaMMUT ViT-B/16 (Kuo et al., TMLR 2023, arXiv:2303.16839; docs/methods/mammut.md): the RILS
# family's ViT-B/16 image tower, its tokens mean-pooled, LayerNorm-ed and projected for the
# contrastive embedding; one text decoder of the CLIP text tower's size (width 512, 8 heads,
# 12 blocks) with a cross-attention block after every second block, run bidirectionally for the
# contrastive embedding and causally with cross-attention for captioning. The contrastive loss
# is the focal sigmoid loss of the paper's code (alpha 0.5, gamma 1) with a learnable bias
# starting at -10 and the scale at 10 (SigLIP's initialisation); captioning and contrastive
# losses are weighted 1 : 1 (open_clip's CoCa uses 2 : 1).
model = dict(
    type='MaMMUT',
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
    image_head=dict(type='ImageEmbeddingHead', pooling='mean', norm_cfg=dict(type='LN'),
                    projection_bias=False),
    text_encoder=dict(
        type='MaMMUTTextDecoder',
        context_length=77,
        vocab_size=49408,
        width=512,
        heads=8,
        layers=12,
        cross_attention_every=2),
    embed_dims=512,
    loss_contrastive=dict(type='FocalContrastiveLoss', alpha=0.5, gamma=1.0,
                          learnable_bias=True, bias_init=-10.0),
    logit_scale_init=2.302585092994046,  # ln(10)
    caption_loss_weight=1.0,
    max_caption_length=30,
    beam_size=1,
    data_preprocessor=dict(type='ImageTextDataPreprocessor'))
