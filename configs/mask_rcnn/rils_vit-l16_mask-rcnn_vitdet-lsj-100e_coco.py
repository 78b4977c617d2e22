# ViTDet-L on COCO (detectron2's projects/ViTDet/configs/COCO/mask_rcnn_vitdet_l_100ep.py): the
# ViT-B recipe with a RILS ViT-L/16 encoder (24 blocks, width 1024), drop path 0.4, layer-wise
# lr decay 0.8, windowed attention in all blocks but 5, 11, 17, 23.
# The encoder: tools/model_converters/rils_to_toolbox.py on an L/16 pretraining checkpoint.
_base_ = ['./rils_vit-b16_mask-rcnn_vitdet-lsj-100e_coco.py']

pretrained_checkpoint = 'checkpoints/rils_vit-l16_encoder.pth'
model = dict(
    backbone=dict(
        arch='l',
        out_indices=[23],
        drop_path_rate=0.4,
        window_block_indexes=[i for i in range(24) if i not in (5, 11, 17, 23)],
        # with_cp=True trades compute for memory if 4 images per GPU do not fit.
        init_cfg=dict(checkpoint=pretrained_checkpoint)),
    neck=dict(in_channels=1024))
optim_wrapper = dict(paramwise_cfg=dict(layer_decay_rate=0.8))
