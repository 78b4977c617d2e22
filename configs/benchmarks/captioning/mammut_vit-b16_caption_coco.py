# Captioning of MaMMUT ViT-B/16 on COCO captions (a COCO-format caption file): greedy captions
# of at most 30 tokens, BLEU-4, CIDEr-D and exact match against all of each image's captions
# (rils_mm.evaluation.CaptionMetric):
#   python tools/test.py configs/benchmarks/captioning/mammut_vit-b16_caption_coco.py \
#       work_dirs/mammut_b16/epoch_25.pth
# model.beam_size=3 (--cfg-options) decodes with beam search instead.
_base_ = [
    '../_base_/zero_shot_runtime.py',
    '../../_base_/models/mammut_vit-b16.py',
]

model = dict(backbone=dict(init_cfg=None))  # every weight comes from the checkpoint
test_pipeline = [
    dict(type='LoadImageRGB'),
    dict(type='ResizeEdge', scale=224, edge='short', backend='pillow', interpolation='bicubic'),
    dict(type='CenterCrop', crop_size=224),
    dict(type='PackImageText', meta_keys=('key', 'text', 'captions', 'img_path')),
]
test_dataloader = dict(
    batch_size=64,
    num_workers=8,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    collate_fn=dict(type='default_collate'),
    dataset=dict(
        type='CocoCaptionDataset',
        data_root='data/coco',
        ann_file='annotations/captions_val2017.json',
        data_prefix=dict(img_path='val2017'),
        test_mode=True,
        pipeline=test_pipeline))
test_evaluator = dict(type='CaptionMetric')
