# MILAN ViT-B/16 (Hou et al., 2022, arXiv:2208.06049) through mmpretrain's own MILAN classes with
# this package's pretraining ViT: patches kept by the CLIP teacher's class-token attention
# (mask ratio 0.75), mmpretrain's prompting decoder (visible tokens fixed as keys/values, only
# the mask tokens updated; 8 blocks of width 512, as mmpretrain's MILAN config, with the
# decoder's input width set to the encoder's 768, which that config leaves at 1024), predicting
# the teacher's 512-wide projected tokens, scored by mmpretrain's cosine-similarity loss
# (2 - 2 cos) over all tokens, as mmpretrain's MILAN (the paper's loss is on all patches too).
model = dict(
    type='MILAN',
    backbone=dict(type='RILSMILANViT', arch='b', img_size=224, patch_size=16,
                  mask_ratio=0.75, out_type='raw', init_cfg=[
                      dict(type='Xavier', layer='Linear', distribution='uniform'),
                      dict(type='Constant', layer='LayerNorm', val=1.0, bias=0.0)]),
    neck=dict(
        type='MILANPretrainDecoder',
        num_patches=196,
        patch_size=16,
        embed_dim=768,
        decoder_embed_dim=512,
        decoder_depth=8,
        decoder_num_heads=16,
        predict_feature_dim=512,
        init_cfg=[
            dict(type='Xavier', layer='Linear', distribution='uniform'),
            dict(type='Constant', layer='LayerNorm', val=1.0, bias=0.0)]),
    head=dict(
        type='MIMHead',
        loss=dict(type='CosineSimilarityLoss', shift_factor=2.0, scale_factor=2.0)),
    # The teacher: any local CLIP; here OpenAI's ViT-B/16 file (nothing is downloaded).
    # masking='uniform' gives MAE's uniform masking instead (the paper's ablation).
    target_generator=dict(
        type='CLIPTeacher',
        model=dict(type='OpenCLIPModel', arch='ViT-B-16-quickgelu',
                   pretrained='checkpoints/openai_clip_vit_b16.pt'),
        masking='attention'),
    # CLIP's normalisation, which the teacher expects; the images alone.
    data_preprocessor=dict(type='ImageTextDataPreprocessor', images_only=True))
