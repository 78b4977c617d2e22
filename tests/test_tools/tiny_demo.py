"""``--cfg-options`` that shrink the demo RILS (``configs/rils/demo_cpu.py``) to seconds."""

# A one-block model of width 32 on 32 px images (16 patches of 8 px), joint width 16.
TINY_MODEL = [
    'model.backbone.arch.embed_dims=32', 'model.backbone.arch.num_layers=1',
    'model.backbone.arch.num_heads=2', 'model.backbone.arch.feedforward_channels=64',
    'model.backbone.img_size=32', 'model.neck.num_patches=16', 'model.neck.embed_dim=32',
    'model.neck.decoder_embed_dim=32', 'model.neck.decoder_num_heads=2',
    'model.text_encoder.width=32', 'model.text_encoder.layers=1', 'model.text_encoder.heads=2',
    'model.text_encoder.output_dim=16', 'model.embed_dims=16'
]


def tiny_run(samples_per_epoch: int) -> list:
    """TINY_MODEL plus one epoch of ``samples_per_epoch`` pairs in batches of 16, no workers,
    every iteration logged."""
    return TINY_MODEL + [
        'train_cfg.max_epochs=1', 'train_dataloader.batch_size=16',
        'train_dataloader.dataset.batch_size=16',
        f'train_dataloader.dataset.samples_per_epoch={samples_per_epoch}',
        'train_dataloader.num_workers=0', 'train_dataloader.persistent_workers=False',
        'default_hooks.logger.interval=1'
    ]


def tiny_data(num_train: int) -> list:
    """Generated demo data of ``num_train`` training pairs (8 validation, 8 held out), 32 px."""
    return [
        f'train_dataloader.dataset.generate_cfg.num_train={num_train}',
        'train_dataloader.dataset.generate_cfg.num_val=8',
        'train_dataloader.dataset.generate_cfg.num_heldout=8',
        'train_dataloader.dataset.generate_cfg.image_size=32',
        'train_dataloader.dataset.pipeline.1.scale=32'
    ]
