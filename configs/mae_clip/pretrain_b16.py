# MAE+CLIP ViT-B/16 on the RILS recipe (same data, schedule and towers as RILS and CLIP):
#   tools/dist_train.sh configs/mae_clip/pretrain_b16.py 32
# Total loss = contrastive + model.pixel_loss_weight x pixel (1 : 1 by default).
_base_ = [
    '../_base_/models/mae_clip_vit-b16.py',
    '../_base_/datasets/laion_wds.py',
    '../_base_/schedules/rils_25e.py',
    '../_base_/default_runtime.py',
]

train_dataloader = dict(batch_size=128, dataset=dict(batch_size=128))
