# ImageNet-1k val in folder layout (data/imagenet/val/<wnid>/*.JPEG) scored zero-shot against
# the 1000 class names with the 80 OpenAI prompt templates (open_clip's zero-shot protocol:
# bicubic resize of the short side to 224, centre crop 224).
data_root = 'data/imagenet'
classnames = 'imagenet_classnames.txt'  # shipped in rils_mm/datasets/data
templates = 'openai_imagenet_templates.txt'
class_subset = None

test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='ResizeEdge', scale=224, edge='short', backend='pillow', interpolation='bicubic'),
    dict(type='CenterCrop', crop_size=224),
    dict(type='PackInputs'),
]
test_dataloader = dict(
    batch_size=64,
    num_workers=8,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type='ImageNetFolder',
        data_root=data_root,
        data_prefix='val',
        class_subset=class_subset,
        pipeline=test_pipeline))
test_evaluator = dict(type='ZeroShotAccuracy', topk=(1, 5))
