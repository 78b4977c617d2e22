# The README demo's generated captioned-shapes dataset (rils_mm/datasets/demo_shapes.py):
# 64 px images of coloured shapes with captions such as "a large red circle on the left".
# It is written to data/demo_shapes on first use (or by
# tools/dataset_converters/make_demo_data.py). Some (colour, shape) pairs appear only in the
# held-out split, for zero-shot classification over the "<colour> <shape>" classes.
data_root = 'data/demo_shapes'
img_size = 64
batch_size = 64
samples_per_epoch = 4096  # the generated training pairs

train_pipeline = [
    dict(type='LoadImageRGB', min_size=8),
    dict(type='RandomResizedCrop', scale=img_size, crop_ratio_range=(0.5, 1.0),
         interpolation='bicubic', backend='pillow'),
    dict(type='CLIPTokenize', context_length=77),
    dict(type='PackImageText'),
]
test_pipeline = [
    dict(type='LoadImageRGB', min_size=8),
    dict(type='ResizeEdge', scale=img_size, edge='short', interpolation='bicubic',
         backend='pillow'),
    dict(type='CenterCrop', crop_size=img_size),
    dict(type='CLIPTokenize', context_length=77),
    dict(type='PackImageText'),
]

train_dataloader = dict(
    batch_size=batch_size,
    num_workers=2,
    persistent_workers=True,
    sampler=None,  # the dataset splits and shuffles itself
    collate_fn=dict(type='default_collate'),
    dataset=dict(
        type='DemoShapesShardDataset',
        data_root=data_root,
        generate_cfg=dict(num_train=samples_per_epoch, image_size=img_size),
        pipeline=train_pipeline,
        seed=0,
        shuffle_buffer=512,
        samples_per_epoch=samples_per_epoch,
        batch_size=batch_size))

# Held-out (unseen colour-shape pairs) and val (seen pairs, new images) splits for the
# zero-shot / retrieval evaluation: gt_label indexes the lines of `classnames_file`.
classnames_file = data_root + '/classnames.txt'
heldout_dataset = dict(
    type='JsonlImageTextDataset',
    ann_file=data_root + '/heldout.jsonl',
    data_prefix=dict(img_path=data_root + '/heldout'),
    img_key='filepath',
    caption_key='caption',
    label_key='label',
    pipeline=test_pipeline,
    test_mode=True)
val_seen_dataset = dict(
    heldout_dataset,
    ann_file=data_root + '/val.jsonl',
    data_prefix=dict(img_path=data_root + '/val'))

custom_hooks = [
    dict(type='DataResumeHook'),
    dict(type='BadSampleHook', interval=50, max_bad_fraction=0.1, min_samples=1000),
]
