# RILS ViT-B/16, the paper recipe (pretrain_b16.py) on 8 GPUs: the global batch stays 4096.
#   tools/dist_train.sh configs/rils/pretrain_b16_8xb128-accum4.py 8
# Each GPU loads 512 pairs per step and computes them as 4 micro-batches of 128 (the memory of
# a 128-pair step), making ONE optimizer step whose loss is the loss of the whole 4096 batch:
# contrastive negatives, RILS's caption prototypes and the correct-retrieval filter are over
# all 4096 pairs (model.accumulation, GradCache; ImageTextPretrainer's docstring). Not
# mmengine's accumulative_counts, which would average 4 losses of 1024-pair batches. Each
# micro-batch is encoded twice (without and with gradient), so a step costs more than 4 steps
# of 128; tools/benchmark_train.py --accumulate 4 measures it.
# lr 5e-4 as in the paper: auto_scale_lr's base batch is 4096 = 8 GPUs x 512, no rescaling.
_base_ = ['./pretrain_b16.py']

batch_size = 512  # per GPU and step: 4 micro-batches of 128

model = dict(accumulation=dict(micro_batches=4))
train_dataloader = dict(batch_size=512, dataset=dict(batch_size=512))
auto_scale_lr = dict(base_batch_size=4096, enable=True)
