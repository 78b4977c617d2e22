# The pretrained image-text model for zero-shot evaluation: the RILS ViT-B/16 pretraining model
# as configured for pretraining, so that its checkpoints load as they were saved
# (`tools/test.py CONFIG --checkpoint work_dirs/.../epoch_25.pth`). The zero-shot configs wrap
# it: model = dict(type='ZeroShotClassifier', model={{_base_.model}}, ...).
_base_ = ['../../_base_/models/rils_vit-b16.py']

# mmpretrain's LoadImageFromFile decodes to BGR; RILS is trained on RGB.
model = dict(data_preprocessor=dict(to_rgb=True))
