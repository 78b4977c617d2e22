"""Image-text datasets, evaluation datasets and transforms, registered in mmpretrain's
registries on import.

Besides the pretraining data, this package holds the evaluation sets (``zero_shot``: ImageNet
and its distribution shifts; ``retrieval``: COCO and Flickr30K; ``few_shot``: ``k``-shot
training subsets) and the zero-shot text resources (``resources``: class names, prompt
templates, class subsets, shipped in ``data/``), which the metrics and models build on.
"""
from . import transforms  # noqa: F401  (registers the transforms)
from . import retrieval, zero_shot  # noqa: F401  (register the evaluation datasets)
from .bad_samples import BadSampleError, counts_from_batch
from .caption_datasets import (BaseImageTextDataset, CocoCaptionDataset, CsvImageTextDataset,
                               JsonlImageTextDataset)
from .demo_shapes import DemoShapesShardDataset, ensure_demo_shapes, generate_demo_shapes
from .few_shot import FewShotDataset, few_shot_indices
from .image_text_shards import DataStreamError, ImageTextShardDataset
from .resources import (DATA_DIR, load_class_subset, load_classnames, load_templates,
                        read_lines, resolve_data_file)
from .shard_tools import ShardWriter, inspect_shards, make_shards
from .shards import expand_shard_urls, scan_shard

__all__ = [
    'BadSampleError', 'counts_from_batch', 'BaseImageTextDataset', 'CocoCaptionDataset',
    'CsvImageTextDataset', 'JsonlImageTextDataset', 'DemoShapesShardDataset',
    'ensure_demo_shapes', 'generate_demo_shapes', 'ImageTextShardDataset', 'DataStreamError',
    'ShardWriter', 'inspect_shards', 'make_shards', 'expand_shard_urls', 'scan_shard',
    'FewShotDataset', 'few_shot_indices', 'DATA_DIR', 'load_class_subset', 'load_classnames',
    'load_templates', 'read_lines', 'resolve_data_file'
]
