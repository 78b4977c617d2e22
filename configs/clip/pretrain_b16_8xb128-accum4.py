# CLIP ViT-B/16 baseline on the RILS recipe (pretrain_b16.py) on 8 GPUs, global batch 4096.
#   tools/dist_train.sh configs/clip/pretrain_b16_8xb128-accum4.py 8
# Each GPU loads 512 pairs per step and computes them as 4 micro-batches of 128, making ONE
# optimizer step whose contrastive loss is over all 4096 pairs (model.accumulation, GradCache;
# ImageTextPretrainer's docstring), not mmengine's accumulative_counts (the mean of 4 losses
# over 1024 pairs each). lr 5e-4 as in the paper: auto_scale_lr's base batch is 4096 = 8 x 512.
_base_ = ['./pretrain_b16.py']

batch_size = 512  # per GPU and step: 4 micro-batches of 128

model = dict(accumulation=dict(micro_batches=4))
train_dataloader = dict(batch_size=512, dataset=dict(batch_size=512))
auto_scale_lr = dict(base_batch_size=4096, enable=True)
