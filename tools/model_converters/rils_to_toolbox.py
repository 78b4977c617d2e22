"""Extract the vision encoder of a RILS / CLIP-baseline checkpoint for mmpretrain, mmdet, mmseg
or timm.

    python tools/model_converters/rils_to_toolbox.py work_dirs/rils/epoch_25.pth \
        checkpoints/rils_vit-b16_encoder.pth --format mmdet \
        --config configs/mask_rcnn/rils_vit-b16_mask-rcnn_vitdet-lsj-100e_coco.py
"""
from rils_mm.tools.model_converters import rils_to_toolbox_main, run

if __name__ == '__main__':
    run(rils_to_toolbox_main)
