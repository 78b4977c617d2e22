# UperNet on ADE20K with a RILS ViT-L/16 encoder: the ViT-B recipe (512 x 512, 160k iterations
# at batch 16, AdamW 1e-4, mixed precision) with the ViT-L structure of mmseg's only ViT-L UperNet,
# BEiT-L (mmseg::beit/beit-large_upernet_8xb1-amp-160k_ade20k-640x640.py; mmseg has no MAE-L
# config): features of blocks 8, 12, 16, 24, drop path 0.2, 1024-channel heads. Layer-wise lr
# decay 0.75: MAE's change from ViT-B to ViT-L when fine-tuning (0.65 -> 0.75; He et al., 2022,
# Table 9). `python tools/analysis_tools/compare_recipes.py ade20k-l` prints it beside BEiT-L.
_base_ = ['./rils_vit-b16_upernet_8xb2-160k_ade20k-512x512.py']

pretrained_checkpoint = 'checkpoints/rils_vit-l16_encoder.pth'
model = dict(
    backbone=dict(
        arch='l',
        out_indices=[7, 11, 15, 23],
        drop_path_rate=0.2,
        init_cfg=dict(checkpoint=pretrained_checkpoint)),
    neck=dict(embed_dim=1024),
    decode_head=dict(in_channels=[1024, 1024, 1024, 1024], channels=1024),
    auxiliary_head=dict(in_channels=1024))
optim_wrapper = dict(paramwise_cfg=dict(layer_decay_rate=0.75))

recipe_notes = dict(
    lr='1e-4 as the MAE-B recipe: 2e-5 is BEiT-L\'s for its checkpoint already fine-tuned on '
    'ImageNet-22k; ours, as MAE\'s, comes from pretraining alone',
    layer_decay='0.75 (MAE\'s B -> L change); BEiT-L\'s 0.95 goes with its 22k-fine-tuned '
    'checkpoint',
    schedule='the B recipe\'s; BEiT-L warms up 3000 iterations and runs 320k, but its poly '
    'decay ends at 160k (lr 0 for the second half)',
    images_seen='2.56M at a non-zero lr in both: BEiT-L\'s last 160k iterations run at lr 0',
    crop='512 x 512, the B recipe\'s and MAE\'s ADE20K setting; BEiT-L trains at 640 x 640',
    test_mode='512 windows (the training crop), stride 341 as the B recipe',
)
