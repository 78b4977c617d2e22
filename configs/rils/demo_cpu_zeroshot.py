# Zero-shot classification of the demo model on the held-out colour-shape combinations
# (never seen in training), among all 30 "<colour> <shape>" classes (chance: 3.3%):
#   python tools/test.py configs/rils/demo_cpu_zeroshot.py work_dirs/demo_cpu/epoch_6.pth
# Evaluate the seen combinations instead with
#   --cfg-options test_dataloader.dataset.ann_file=data/demo_shapes/val.jsonl \
#                 test_dataloader.dataset.data_prefix.img_path=data/demo_shapes/val
_base_ = ['./demo_cpu.py']

model = dict(
    _delete_=True,
    type='ZeroShotClassifier',
    model={{_base_.model}},
    classnames={{_base_.classnames_file}},
    templates='data/demo_shapes/templates.txt')

test_dataloader = dict(
    batch_size=128,
    num_workers=1,
    persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    collate_fn=dict(type='default_collate'),
    dataset={{_base_.heldout_dataset}})
test_evaluator = dict(type='ZeroShotAccuracy', topk=(1, 5))
test_cfg = dict(type='TestLoop')
