# Label-efficient COCO: the ViTDet COCO recipe on 10 % of train2017 (the paper's label-efficient
# table, docs/methods/README.md). The subset (seed 0, the same images every time, their ids in
# the .ids.txt file beside it) comes from
#   python tools/dataset_converters/coco_subset.py data/coco/annotations/instances_train2017.json \
#       data/coco/annotations/instances_train2017_10pct_seed0.json --fraction 0.1 --seed 0
# Schedule: 100 epochs of the subset, as ViTDet's 100 epochs of the full set (its 184375
# iterations and lr steps scaled by the fraction).
_base_ = ['./rils_vit-b16_mask-rcnn_vitdet-lsj-100e_coco.py']

fraction = 0.1
train_dataloader = dict(
    dataset=dict(dataset=dict(ann_file='annotations/instances_train2017_10pct_seed0.json')))

max_iters = round(184375 * fraction)
interval = max(max_iters // 5, 1)
train_cfg = dict(max_iters=max_iters, val_interval=interval)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=250),
    dict(type='MultiStepLR', begin=0, end=max_iters, by_epoch=False,
         milestones=[round(163889 * fraction), round(177546 * fraction)], gamma=0.1)
]
default_hooks = dict(checkpoint=dict(interval=interval))
