# ViTDet's LVIS v1 recipe (detectron2's projects/ViTDet/configs/LVIS/mask_rcnn_vitdet_b_100ep.py)
# on top of the COCO one: 1203 classes with a per-class sigmoid and the federated loss (50
# classes per batch, negatives drawn by image count ** 0.5), repeat-factor sampling (threshold
# 1e-3), lr 2e-4, 156250 iterations at batch 64 (100 epochs of 100k images) with lr x0.1 at
# 138889 and 150463, up to 300 detections per image at score >= 0.02, LVISMetric.
_base_ = ['./rils_vit-b16_mask-rcnn_vitdet-lsj-100e_coco.py']

dataset_type = 'LVISV1Dataset'
data_root = 'data/lvis_v1/'
num_classes = 1203

model = dict(
    roi_head=dict(
        bbox_head=dict(
            num_classes=num_classes,
            loss_cls=dict(
                _delete_=True,
                type='FederatedLoss',
                num_classes=num_classes,
                ann_file=data_root + 'annotations/lvis_v1_train.json',  # image_count per class
                freq_weight_power=0.5,
                num_fed_loss_classes=50)),
        mask_head=dict(num_classes=num_classes)),
    test_cfg=dict(rcnn=dict(score_thr=0.02, max_per_img=300)))

# mmdet's ClassBalancedDataset repeats an image ceil(r) times for its repeat factor r, where
# detectron2's RepeatFactorTrainingSampler rounds r stochastically each epoch: the same
# threshold, slightly more rare-class repeats; the loop counts iterations either way.
train_dataloader = dict(
    dataset=dict(
        _delete_=True,
        type='ClassBalancedDataset',
        oversample_thr=1e-3,
        dataset=dict(
            type=dataset_type,
            data_root=data_root,
            ann_file='annotations/lvis_v1_train.json',
            data_prefix=dict(img=''),  # LVIS v1 images are named by their COCO url
            filter_cfg=dict(filter_empty_gt=True, min_size=32),
            pipeline={{_base_.train_pipeline}},
            backend_args=None)))
val_dataloader = dict(
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        ann_file='annotations/lvis_v1_val.json',
        data_prefix=dict(img='')))
test_dataloader = val_dataloader
val_evaluator = dict(
    _delete_=True,
    type='LVISMetric',
    ann_file=data_root + 'annotations/lvis_v1_val.json',
    metric=['bbox', 'segm'])  # lvis-api's default: 300 detections per image, as detectron2
test_evaluator = val_evaluator

optim_wrapper = dict(optimizer=dict(lr=2e-4))
max_iters = 156250
interval = 30000  # detectron2's eval_period for LVIS
train_cfg = dict(max_iters=max_iters, val_interval=interval)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=250),
    dict(type='MultiStepLR', begin=0, end=max_iters, by_epoch=False,
         milestones=[138889, 150463], gamma=0.1)
]
default_hooks = dict(checkpoint=dict(interval=interval))
