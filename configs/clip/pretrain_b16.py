# CLIP ViT-B/16 baseline on the RILS recipe (same data, schedule and towers; contrastive only):
#   tools/dist_train.sh configs/clip/pretrain_b16.py 32
_base_ = [
    '../_base_/models/clip_vit-b16.py',
    '../_base_/datasets/laion_wds.py',
    '../_base_/schedules/rils_25e.py',
    '../_base_/default_runtime.py',
]

train_dataloader = dict(batch_size=128, dataset=dict(batch_size=128))
