"""Image-text datasets and transforms, registered in mmpretrain's registries on import.

``rils_mm.datasets.zero_shot`` and ``rils_mm.datasets.retrieval`` (evaluation datasets) are
imported here when present.
"""
import importlib

from . import transforms  # noqa: F401  (registers the transforms)
from .bad_samples import BadSampleError, counts_from_batch
from .caption_datasets import (BaseImageTextDataset, CocoCaptionDataset, CsvImageTextDataset,
                               JsonlImageTextDataset)
from .demo_shapes import DemoShapesShardDataset, ensure_demo_shapes, generate_demo_shapes
from .image_text_shards import ImageTextShardDataset
from .shard_tools import ShardWriter, inspect_shards, make_shards
from .shards import expand_shard_urls, scan_shard

__all__ = [
    'BadSampleError', 'counts_from_batch', 'BaseImageTextDataset', 'CocoCaptionDataset',
    'CsvImageTextDataset', 'JsonlImageTextDataset', 'DemoShapesShardDataset',
    'ensure_demo_shapes', 'generate_demo_shapes', 'ImageTextShardDataset', 'ShardWriter',
    'inspect_shards', 'make_shards', 'expand_shard_urls', 'scan_shard'
]

# The evaluation engineer's dataset modules live in this package too.
for _name in ('zero_shot', 'retrieval'):
    if importlib.util.find_spec(f'{__name__}.{_name}') is not None:
        importlib.import_module(f'{__name__}.{_name}')
