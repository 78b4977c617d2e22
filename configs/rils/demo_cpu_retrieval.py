# Zero-shot image<->text retrieval (R@1/5/10) of the demo model on the held-out split: 512
# images of unseen colour-shape combinations, one caption each (chance R@1: 0.2%):
#   python tools/test.py configs/rils/demo_cpu_retrieval.py work_dirs/demo_cpu/epoch_6.pth
_base_ = ['./demo_cpu.py']

model = dict(_delete_=True, type='ZeroShotRetriever', model={{_base_.model}})

test_pipeline = [
    dict(type='LoadImageRGB', min_size=8),
    dict(type='PackInputs', algorithm_keys=['text', 'gt_text_id', 'gt_image_id'],
         meta_keys=['image_id']),
]
test_dataloader = dict(
    batch_size=128,
    num_workers=1,
    persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type='KarpathyRetrieval',
        data_root={{_base_.data_root}},
        data_prefix='heldout',
        ann_file='heldout_karpathy.json',
        split='test',
        test_mode=True,
        pipeline=test_pipeline))
test_evaluator = dict(type='ImageTextRetrievalRecall', topk=(1, 5, 10))
test_cfg = dict(type='TestLoop')
