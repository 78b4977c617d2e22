# The demo RILS (demo_cpu.py) validating zero-shot top-1/top-5 on the held-out colour-shape
# combinations after every epoch, as tools/test.py with demo_cpu_zeroshot.py would score the
# checkpoint of that epoch (the model scores itself through model.zero_shot):
#   python tools/train.py configs/rils/demo_cpu_val.py
_base_ = ['./demo_cpu.py']

model = dict(
    zero_shot=dict(classnames={{_base_.classnames_file}},
                   templates='data/demo_shapes/templates.txt'))

val_dataloader = dict(
    batch_size=128,
    num_workers=1,
    persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=False),  # each rank a share of the images
    collate_fn=dict(type='default_collate'),
    dataset={{_base_.heldout_dataset}})
val_evaluator = dict(type='ZeroShotAccuracy', topk=(1, 5))
val_cfg = dict(type='ValLoop')
train_cfg = dict(val_interval=1)
# Keep the best zero-shot top-1 checkpoint beside the latest.
default_hooks = dict(checkpoint=dict(save_best='accuracy/top1', rule='greater'))
