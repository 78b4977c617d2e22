# MAE+CLIP ViT-B/16 on the RILS recipe (same data, schedule and towers as RILS and CLIP):
#   # 4 nodes x 8 GPUs: on each node, NNODES=4 NODE_RANK=0..3 MASTER_ADDR=<node 0>
#   tools/dist_train.sh configs/mae_clip/pretrain_b16.py 8
# Total loss = contrastive + model.pixel_loss_weight x pixel (1 : 1 by default).
_base_ = [
    '../_base_/models/mae_clip_vit-b16.py',
    '../_base_/datasets/laion_wds.py',
    '../_base_/schedules/rils_25e.py',
    '../_base_/default_runtime.py',
    '../_base_/datasets/imagenet_zero_shot_val.py',
]

# Zero-shot ImageNet top-1/top-5 after every epoch, keeping the best checkpoint
# (configs/_base_/datasets/imagenet_zero_shot_val.py: data/imagenet/val, or --no-validate).
model = dict(zero_shot={{_base_.imagenet_zero_shot}})
default_hooks = dict(checkpoint=dict(save_best='accuracy/top1', rule='greater'))

train_dataloader = dict(batch_size=128, dataset=dict(batch_size=128))
