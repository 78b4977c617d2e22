# 10-shot ImageNet-1k linear probe (10 training images per class, drawn with `seed`), on the
# linear-probe recipe with the batch scaled to 256 (LARS lr 6.4 * 256 / 16384 = 0.1).
# 1- and 2-shot configs change `shots` only. Validation: the full ImageNet val set.
_base_ = './rils_vit-b16_linear-90e_in1k.py'

shots = 10
seed = 0
train_dataloader = dict(
    batch_size=32,  # x 8 GPUs
    dataset=dict(
        _delete_=True,
        type='FewShotDataset',
        shots=shots,
        seed=seed,
        dataset=dict(
            type='ImageNet',
            data_root='data/imagenet',
            split='train',
            pipeline={{_base_.train_pipeline}})))
optim_wrapper = dict(optimizer=dict(lr=0.1))
