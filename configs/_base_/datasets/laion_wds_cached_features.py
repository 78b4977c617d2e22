# LAION pairs as cached image features (LiT with a locked image tower): shards written by
#   python tools/cache_image_features.py CONFIG --out data/laion_features
# hold KEY.npy (the locked tower's pooled features, C floats) + KEY.txt [+ KEY.json]. Training
# reads them instead of images and skips the image tower (the model's image head still
# projects them). The model's image tower and pooling must be the ones the cache was made
# with (cache_info.json in the cache folder records the config and checkpoint).
#
# Augmentation is necessarily off in this mode: the features were computed once, from the
# deterministic `cache_pipeline` (resize + center crop), so every epoch sees the same view of
# each image. Use laion_wds.py (images, RandomResizedCrop) to train with augmentation.
#
# Shuffling, rank/worker splitting, exact resume (DataResumeHook) and bad-sample counting
# (BadSampleHook; an unreadable .npy counts as `undecodable_features`) work as for images.
data_root = 'data/laion_features'
train_shards = data_root + '/{00000..01999}.tar'  # cache_image_features.py: 10k per shard
samples_per_epoch = 20_000_000
batch_size = 128  # per GPU

train_pipeline = [
    # dims=None accepts any width; set it to the image tower's width to check every sample.
    dict(type='LoadImageFeatures', dims=None),
    dict(type='CLIPTokenize', context_length=77),
    dict(type='PackImageText'),
]

train_dataloader = dict(
    batch_size=batch_size,
    num_workers=4,  # no image decoding: a few workers keep up
    persistent_workers=True,
    pin_memory=True,
    sampler=None,  # the dataset splits and shuffles itself
    collate_fn=dict(type='default_collate'),
    dataset=dict(
        type='ImageTextShardDataset',
        shards=train_shards,
        image_exts=('npy', ),
        pipeline=train_pipeline,
        seed=0,
        shuffle_buffer=5000,
        samples_per_epoch=samples_per_epoch,
        batch_size=batch_size))

custom_hooks = [
    dict(type='DataResumeHook'),
    dict(type='BadSampleHook', interval=50, max_bad_fraction=0.1, min_samples=10000),
]
