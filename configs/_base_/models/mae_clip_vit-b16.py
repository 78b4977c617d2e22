# MAE+CLIP ViT-B/16, the RILS paper's baseline (docs/methods/mae_clip.md): the CLIP baseline's
# towers and contrastive loss on the intact pass, plus MAE's pixel reconstruction (mmpretrain's
# decoder and head, as in mae_vit-b16.py) on the masked pass; total = contrastive +
# pixel_loss_weight x pixel, 1 : 1.
_base_ = ['./clip_vit-b16.py']

model = dict(
    type='MAECLIP',
    backbone=dict(mask_ratio=0.75),
    neck=dict(
        type='MAEPretrainDecoder',
        num_patches=196,
        patch_size=16,
        in_chans=3,
        embed_dim=768,
        decoder_embed_dim=512,
        decoder_depth=8,
        decoder_num_heads=16,
        mlp_ratio=4.,
        init_cfg=[
            dict(type='Xavier', layer='Linear', distribution='uniform'),
            dict(type='Constant', layer='LayerNorm', val=1.0, bias=0.0),
        ]),
    head=dict(
        type='MAEPretrainHead',
        norm_pix=True,
        patch_size=16,
        loss=dict(type='PixelReconstructionLoss', criterion='L2')),
    pixel_loss_weight=1.0)
