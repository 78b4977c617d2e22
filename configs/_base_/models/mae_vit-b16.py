# MAE ViT-B/16 (He et al., CVPR 2022) through mmpretrain's own MAE classes, with this package's
# pretraining ViT (the same encoder as RILS and CLIP, so the same converters and transfer
# configs take its checkpoint): mask ratio 0.75, an 8-block 512-wide decoder, the MSE of
# per-patch normalised pixels on the masked patches. docs/methods/mae.md.
model = dict(
    type='MAE',
    backbone=dict(type='RILSMaskedViT', arch='b', img_size=224, patch_size=16,
                  mask_ratio=0.75, out_type='raw'),
    neck=dict(
        type='MAEPretrainDecoder',
        num_patches=196,
        patch_size=16,
        in_chans=3,
        embed_dim=768,
        decoder_embed_dim=512,
        decoder_depth=8,
        decoder_num_heads=16,
        mlp_ratio=4.),
    head=dict(
        type='MAEPretrainHead',
        norm_pix=True,
        patch_size=16,
        loss=dict(type='PixelReconstructionLoss', criterion='L2')),
    # The image-text datasets' batches, images only, with CLIP's normalisation (as RILS).
    data_preprocessor=dict(type='ImageTextDataPreprocessor', images_only=True),
    init_cfg=[
        dict(type='Xavier', layer='Linear', distribution='uniform'),
        dict(type='Constant', layer='LayerNorm', val=1.0, bias=0.0),
    ])
