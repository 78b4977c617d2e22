# The COCO ViTDet recipe on LVIS v1 (1203 classes): repeat-factor sampling (threshold 1e-3,
# mmdet's ClassBalancedDataset), up to 300 detections per image at score >= 1e-4, LVISMetric.
_base_ = ['./rils_vit-b16_mask-rcnn_vitdet-lsj-100e_coco.py']

dataset_type = 'LVISV1Dataset'
data_root = 'data/lvis_v1/'
num_classes = 1203

model = dict(
    roi_head=dict(
        bbox_head=dict(num_classes=num_classes),
        mask_head=dict(num_classes=num_classes)),
    test_cfg=dict(rcnn=dict(score_thr=0.0001, max_per_img=300)))

train_dataloader = dict(
    dataset=dict(
        type='RepeatDataset',
        times=4,
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
                backend_args=None))))
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
    metric=['bbox', 'segm'])
test_evaluator = val_evaluator
