# Mask R-CNN with a RILS ViT-B/16 backbone, the ViTDet way (Li et al., 2022): windowed attention
# (14 x 14) in all blocks but 2, 5, 8, 11, decomposed relative positions, a simple feature
# pyramid from the last map, LayerNorm in the neck and heads, 2-conv RPN, 4conv1fc box head.
# The encoder comes from `tools/model_converters/rils_to_toolbox.py` (checked load: fails if a
# pretrained key is missing; the zero-initialised relative-position tables are allowed to be).
_base_ = ['mmdet::_base_/models/mask-rcnn_r50_fpn.py']
custom_imports = dict(imports=['rils_mm'], allow_failed_imports=False)

input_size = (1024, 1024)  # LSJ crop; 'image_size' is the dataset base's name
pretrained_checkpoint = 'checkpoints/rils_vit-b16_encoder.pth'  # backbone.* state dict
norm_cfg = dict(type='LN2d', requires_grad=True)

model = dict(
    data_preprocessor=dict(
        # CLIP's normalisation, as in RILS pretraining.
        mean=[122.770938, 116.7460125, 104.09373615],
        std=[68.5005327, 66.6321579, 70.32316305],
        bgr_to_rgb=True,
        # Every batch padded to the 1024 x 1024 square, at test time too (images are fitted in
        # it), as ViTDet's square_pad=1024 (detectron2): windowed attention and the global
        # blocks' relative positions see the grid they were trained on, boxes are clipped to
        # the image (img_shape), and the padding is zero after normalisation. (A Pad step in
        # the test pipeline, mmdet's ViTDet project, also sets img_shape to the square, which
        # lets boxes reach into the padding.)
        pad_size_divisor=input_size[0],
        batch_augments=[
            dict(type='BatchFixedSizePad', size=input_size, img_pad_value=0, pad_mask=True,
                 mask_pad_value=0, pad_seg=False)
        ]),
    backbone=dict(
        _delete_=True,
        type='RILSViT',
        arch='b',
        img_size=input_size,
        patch_size=16,
        out_indices=[11],
        out_type='featmap',
        drop_path_rate=0.1,
        fixed_pos_embed=False,  # fine-tune the positions (fixed in pretraining)
        window_size=14,
        window_block_indexes=[0, 1, 3, 4, 6, 7, 9, 10],
        use_rel_pos=True,
        with_cp=False,  # True trades compute for memory (ViT-L at batch 4 per GPU)
        init_cfg=dict(
            type='CheckedPretrained',
            checkpoint=pretrained_checkpoint,
            prefix='backbone.',
            ignore_missing=['layers.*.attn.rel_pos_h', 'layers.*.attn.rel_pos_w'])),
    neck=dict(
        _delete_=True,
        type='SimpleFeaturePyramid',
        in_channels=768,
        out_channels=256,
        scale_factors=(4.0, 2.0, 1.0, 0.5),
        num_outs=5,
        norm_cfg=norm_cfg),
    rpn_head=dict(num_convs=2),
    roi_head=dict(
        bbox_head=dict(
            type='Shared4Conv1FCBBoxHead',
            conv_out_channels=256,
            norm_cfg=norm_cfg),
        mask_head=dict(norm_cfg=norm_cfg)))
