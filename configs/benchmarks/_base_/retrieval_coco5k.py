# COCO Karpathy 5k test split: data/coco/{val2014,train2014}/ and Karpathy's
# data/coco/annotations/dataset_coco.json. 5000 images, 25010 captions.
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='ResizeEdge', scale=224, edge='short', backend='pillow', interpolation='bicubic'),
    dict(type='CenterCrop', crop_size=224),
    # Raw captions: open_clip's tokenizer does its own cleaning (mmpretrain's CleanCaption
    # would also strip punctuation, which open_clip's evaluation does not).
    dict(type='PackInputs', algorithm_keys=['text', 'gt_text_id', 'gt_image_id'],
         meta_keys=['image_id']),
]
test_dataloader = dict(
    batch_size=64,
    num_workers=8,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type='KarpathyRetrieval',
        data_root='data/coco',
        data_prefix='',
        ann_file='annotations/dataset_coco.json',
        split='test',
        test_mode=True,
        pipeline=test_pipeline))
test_evaluator = dict(type='ImageTextRetrievalRecall', topk=(1, 5, 10))
