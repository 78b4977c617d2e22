# Zero-shot ImageNet-1k top-1/top-5 while pretraining (what open_clip's --zeroshot-frequency
# with --imagenet-val gives): after every val_interval epochs the model scores ImageNet val
# (folder layout data/imagenet/val/<wnid>/*.JPEG) against the 1000 class names with the 80
# OpenAI prompt templates, and the checkpoint with the best top-1 is kept beside the latest.
# Under DDP each rank scores a share of the images and the metric gathers them.
#
# Point it elsewhere with --cfg-options val_dataloader.dataset.data_root=/path/to/imagenet,
# or train without it with --no-validate. A missing folder stops the run at start, in one
# line, before the first iteration.
#
# The same pipeline serves tools/test.py on a saved checkpoint of the pretraining config
# (test_dataloader below), so its figures are the validation's:
#   python tools/test.py configs/rils/pretrain_b16.py work_dirs/pretrain_b16/epoch_25.pth
# Images are decoded with PIL to RGB, as the training shards are (and as open_clip's
# zero-shot evaluation does); the benchmark configs (configs/benchmarks/zero_shot/) decode
# with OpenCV, which can move JPEG pixels by a level or two.
# A recipe switches it on with its own two lines (mmengine merges no key twice among bases):
#   model = dict(zero_shot={{_base_.imagenet_zero_shot}})
#   default_hooks = dict(checkpoint=dict(save_best='accuracy/top1', rule='greater'))
# and validates every train_cfg.val_interval epochs (mmengine's default: 1).
imagenet_root = 'data/imagenet'
imagenet_zero_shot = dict(classnames='imagenet_classnames.txt',  # shipped in rils_mm/datasets/data
                          templates='openai_imagenet_templates.txt')

zero_shot_val_pipeline = [
    dict(type='LoadImageRGB', max_pixels=None, max_aspect_ratio=None, min_size=1),
    dict(type='ResizeEdge', scale=224, edge='short', backend='pillow', interpolation='bicubic'),
    dict(type='CenterCrop', crop_size=224),
    dict(type='PackInputs'),
]
val_dataloader = dict(
    batch_size=64,
    num_workers=8,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),  # each rank a share of the images
    collate_fn=dict(type='default_collate'),
    dataset=dict(
        type='ImageNetFolder',
        data_root=imagenet_root,
        data_prefix='val',
        pipeline=zero_shot_val_pipeline))
val_evaluator = dict(type='ZeroShotAccuracy', topk=(1, 5))
val_cfg = dict(type='ValLoop')
test_dataloader = val_dataloader
test_evaluator = val_evaluator
test_cfg = dict(type='TestLoop')
