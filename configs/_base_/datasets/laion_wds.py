# LAION image-text pairs as img2dataset webdataset shards (KEY.jpg + KEY.txt [+ KEY.json]).
# Paper recipe (RILS, Yang et al., CVPR 2023, arXiv:2301.06958): 20M pairs, 25 epochs,
# 32 GPUs x 128 = 4096 pairs per step, RandomResizedCrop to 224 with scale (0.5, 1.0). CLIP
# normalisation happens in the model's data preprocessor, so the pipeline ends with uint8
# images and token ids.
#
# The shard stream is split over ranks and dataloader workers, shuffled with `seed` per epoch,
# resumes exactly (DataResumeHook) and skips bad samples, counted by BadSampleHook.
# `samples_per_epoch` makes each pass over the dataloader a nominal epoch for the
# EpochBasedTrainLoop; delete it (and batch_size in the dataset) for IterBasedTrainLoop.
data_root = 'data/laion'
train_shards = data_root + '/{00000..01999}.tar'  # img2dataset: 10k samples per shard
samples_per_epoch = 20_000_000
batch_size = 128  # per GPU
img_size = 224

train_pipeline = [
    # Skip decompression bombs and banners before decoding; grayscale/CMYK/RGBA -> RGB.
    dict(type='LoadImageRGB', max_pixels=8192 * 8192, max_aspect_ratio=20.0, min_size=8),
    dict(type='RandomResizedCrop', scale=img_size, crop_ratio_range=(0.5, 1.0),
         interpolation='bicubic', backend='pillow'),
    dict(type='CLIPTokenize', context_length=77),
    dict(type='PackImageText'),
]

train_dataloader = dict(
    batch_size=batch_size,
    num_workers=8,
    persistent_workers=True,
    pin_memory=True,
    sampler=None,  # the dataset splits and shuffles itself
    collate_fn=dict(type='default_collate'),
    dataset=dict(
        type='ImageTextShardDataset',
        shards=train_shards,
        pipeline=train_pipeline,
        seed=0,
        shuffle_buffer=5000,
        samples_per_epoch=samples_per_epoch,
        batch_size=batch_size))

custom_hooks = [
    dict(type='DataResumeHook'),
    dict(type='BadSampleHook', interval=50, max_bad_fraction=0.1, min_samples=10000),
]
