"""Cache the features of a locked image tower in shards (library side of
``tools/cache_image_features.py``).

LiT trains a text tower against a locked image tower, whose output therefore never changes:
it is computed once here, from the config's deterministic ``cache_pipeline`` (no random
augmentation; the cached features fix one view of every image), and training reads it back
with :class:`LoadImageFeatures` (``configs/_base_/datasets/laion_wds_cached_features.py``).

Source. The config's ``train_dataloader.dataset`` with its pipeline replaced by
``cache_pipeline``: an :class:`ImageTextShardDataset` is read once through, in shard and file
order, in this process; a map-style caption dataset (CSV, JSONL, COCO) index by index. Bad
samples (and unreadable shards) are skipped and counted by reason.

Output, in ``out_dir``: shards ``00000.tar, 00001.tar, ...`` holding per sample ``KEY.npy``
(the C features, ``np.save`` bytes, float32 or float16), ``KEY.txt`` (the caption; for a row
with several, the one the dataset picks in epoch 0) and ``KEY.json`` (source key, source shard
or image path, and all captions when the row has several); ``sizes.json``; ``cache_info.json``
(what was cached from what, and the bad counts); ``progress.json`` (resume state). KEY is the
source key with dots replaced (a dot ends a webdataset key).

Exact resume. Model batches never cross shard boundaries, so a shard's bytes depend only on
where in the source it starts. After each shard is moved into place ``progress.json`` is
replaced atomically with the next shard number, the source position after the shard's last
sample, the bad counts so far and the arguments that determine the output (with the size and
modification time of the weight files the model loads, so retrained weights under the same
path are noticed). Rerunning the same
command after an interruption removes what the interrupted shard left and continues from
there; the result is byte-identical to an uninterrupted run. Different determining arguments
are refused unless ``overwrite``; a finished cache reruns as a no-op.
"""
import copy
import hashlib
import io
import json
import os
import os.path as osp
import re
from collections import Counter
from contextlib import contextmanager
from typing import Callable, Dict, Iterator, List, NamedTuple, Optional

import numpy as np
import torch
from mmengine.config import Config
from mmengine.logging import MMLogger

from rils_mm.compat import URL_PREFIXES, atomic_write_bytes
from rils_mm.datasets.bad_samples import (FILTERED, UNREADABLE_SHARD, UNREADABLE_SHARD_SAMPLES,
                                          BadSampleError)
from rils_mm.datasets.caption_datasets import BaseImageTextDataset
from rils_mm.datasets.image_text_shards import ImageTextShardDataset, ShardFailure, mix_seed
from rils_mm.datasets.shard_tools import ShardWriter
from rils_mm.tools.cli import BUILD_ERRORS, UsageError, as_usage_error, load_config
from rils_mm.utils.progress import Progress

__all__ = ['FeatureCacheError', 'cache_image_features', 'cache_from_config']

PROGRESS_FILE = 'progress.json'
CACHE_INFO_FILE = 'cache_info.json'
SIZES_FILE = 'sizes.json'
SHARD_NAME = '{:05d}.tar'
# Files of a cache, removed when it is overwritten or a stale shard is left by a kill.
_SHARD_FILE = re.compile(r'^(\d{5})\.tar$')
DTYPES = dict(float32=np.float32, float16=np.float16)
MAX_BAD_SAMPLE_LINES = 5


class FeatureCacheError(Exception):
    """A refusal or a mistake in the config or the arguments, reported in one line."""


class CachedSample(NamedTuple):
    """One good sample on its way to the model.

    Attributes:
        key (str): Output key (the source key, dots replaced: a dot ends a webdataset key).
        caption (str): The caption stored as ``KEY.txt``.
        meta (dict): What ``KEY.json`` holds.
        image (torch.Tensor): 3 x H x W uint8, as ``PackImageText`` packs it.
    """
    key: str
    caption: str
    meta: dict
    image: torch.Tensor


class SourceEntry(NamedTuple):
    """One entry of the source stream.

    Attributes:
        position (int): Source position after this entry (resume from here skips it).
        sample (CachedSample, optional): The good sample; None for a bad entry.
        bad (dict): Reason -> count of what was skipped at this entry.
        bad_shard (str, optional): Path of an unreadable shard.
        detail (str): What was wrong with a bad entry, for the log.
    """
    position: int
    sample: Optional[CachedSample]
    bad: Dict[str, int]
    bad_shard: Optional[str] = None
    detail: str = ''


def _unpack(output, key: str, meta: dict) -> CachedSample:
    """A :class:`CachedSample` from the packed output of the cache pipeline."""
    inputs = output.get('inputs') if isinstance(output, dict) else None
    image = inputs.get('images') if isinstance(inputs, dict) else None
    if not torch.is_tensor(image) or image.ndim != 3 or image.shape[0] != 3:
        raise FeatureCacheError(
            'cache_pipeline must end with PackImageText packing a 3 x H x W image; got '
            f'{type(output).__name__} with inputs {sorted(inputs) if inputs else inputs}')
    data_sample = output.get('data_samples')
    caption = data_sample.metainfo.get('caption') if data_sample is not None else None
    if not isinstance(caption, str):
        raise FeatureCacheError('cache_pipeline lost the caption: PackImageText must keep '
                                '"text" in its meta_keys')
    return CachedSample(key.replace('.', '_') or 'sample', caption, meta, image)


class ShardStreamSource:
    """One pass over an :class:`ImageTextShardDataset`, in shard and file order.

    The position counts raw stream entries (good and bad samples, unreadable shards) as the
    dataset's own ``stream_state`` does; resuming reads the stream again up to it, without
    decoding (the tar headers only with ``access='random'``).
    """

    def __init__(self, dataset: ImageTextShardDataset) -> None:
        self.dataset = dataset
        # From sizes.json where there is one (positions also count unreadable shards).
        self.total: Optional[int] = dataset.num_samples

    def describe(self) -> dict:
        shards = self.dataset.shards
        return dict(type=type(self.dataset).__name__, num_shards=len(shards),
                    first_shard=shards[0], last_shard=shards[-1])

    def entries(self, start: int) -> Iterator[SourceEntry]:
        stream = self.dataset.raw_stream(epoch=0, role=0, num_roles=1)
        for position, item in enumerate(stream, 1):
            if position <= start:
                continue  # done before the interruption: tar headers only
            if isinstance(item, ShardFailure):
                bad = {UNREADABLE_SHARD: 1, UNREADABLE_SHARD_SAMPLES: item.lost}
                yield SourceEntry(position, None, bad, item.shard, item.message)
                continue
            # Seeded per position like training's stream, in case the pipeline draws anything.
            seed = mix_seed(self.dataset.seed, 0, 0, position)
            try:
                output = self.dataset.load_sample(item, seed, restore_rng=True)
            except BadSampleError as error:
                yield SourceEntry(position, None, {error.reason: 1}, detail=str(error))
                continue
            yield SourceEntry(position, _unpack(output, item.key,
                                                dict(key=item.key, source=item.shard)), {})


class MapStyleSource:
    """Every row of a map-style caption dataset, in index order; the position is the next
    index."""

    def __init__(self, dataset: BaseImageTextDataset) -> None:
        self.dataset = dataset
        dataset.full_init()
        self.total: Optional[int] = len(dataset)

    def describe(self) -> dict:
        return dict(type=type(self.dataset).__name__, ann_file=self.dataset.ann_file,
                    num_rows=len(self.dataset), dropped_rows=dict(self.dataset.dropped))

    def entries(self, start: int) -> Iterator[SourceEntry]:
        for index in range(start, len(self.dataset)):
            info = self.dataset.get_data_info(index)
            meta = dict(key=str(info.get('key', index)), source=info['img_path'])
            if len(info.get('captions') or ()) > 1:
                meta['captions'] = list(info['captions'])
            try:
                # Not __getitem__: it would replace a bad sample by another row.
                output = self.dataset.prepare_data(index)
                if output is None:
                    raise BadSampleError(FILTERED, meta['source'])
            except BadSampleError as error:
                yield SourceEntry(index + 1, None, {error.reason: 1}, detail=str(error))
                continue
            yield SourceEntry(index + 1, _unpack(output, meta['key'], meta), {})


# ------------------------------------------------------------------------- source and model
def _to_plain(value):
    """ConfigDicts and tuples as plain dicts and lists (for hashing and JSON)."""
    return json.loads(json.dumps(value, sort_keys=True, default=repr))


# Dataset arguments the cache sets itself; they do not change what is cached.
_STREAM_OVERRIDES = dict(shuffle=False, samples_per_epoch=None, batch_size=None, rank=0,
                         world_size=1)


def source_config(cfg: Config) -> dict:
    """The dataset config the cache reads: ``train_dataloader.dataset`` with the
    ``cache_pipeline``."""
    pipeline = cfg.get('cache_pipeline')
    if not pipeline:
        raise FeatureCacheError(
            f'{cfg.filename} has no cache_pipeline: add the deterministic pipeline the image '
            f'tower runs on (LoadImageRGB, ResizeEdge, CenterCrop, PackImageText; no random '
            f'augmentation)')
    random_steps = [str(step.get('type')) for step in pipeline
                    if isinstance(step, dict) and 'Random' in str(step.get('type'))]
    if random_steps:
        raise FeatureCacheError(
            f'cache_pipeline holds random augmentation ({", ".join(random_steps)}): the cached '
            f'features fix one view of each image, so the pipeline must be deterministic')
    dataset_cfg = (cfg.get('train_dataloader') or {}).get('dataset')
    if not dataset_cfg:
        raise FeatureCacheError(f'{cfg.filename} has no train_dataloader.dataset to cache')
    dataset_cfg = _to_plain(dataset_cfg)
    dataset_cfg['pipeline'] = _to_plain(pipeline)
    return dataset_cfg


def build_source(dataset_cfg: dict):
    """A :class:`ShardStreamSource` or :class:`MapStyleSource` for a dataset config."""
    from mmpretrain.registry import DATASETS
    dataset_cfg = copy.deepcopy(dataset_cfg)
    dataset_type = dataset_cfg.get('type')
    dataset_class = DATASETS.get(dataset_type) if isinstance(dataset_type, str) else dataset_type
    if dataset_class is None:
        raise FeatureCacheError(f'unknown dataset type {dataset_type!r} in '
                                f'train_dataloader.dataset')
    if issubclass(dataset_class, ImageTextShardDataset):
        dataset_cfg.update(_STREAM_OVERRIDES)
        return ShardStreamSource(DATASETS.build(dataset_cfg))
    if issubclass(dataset_class, BaseImageTextDataset):
        return MapStyleSource(DATASETS.build(dataset_cfg))
    raise FeatureCacheError(
        f'train_dataloader.dataset is a {dataset_class.__name__}; the cache reads an '
        f'ImageTextShardDataset or a caption dataset (CsvImageTextDataset, '
        f'JsonlImageTextDataset, CocoCaptionDataset)')


def check_model(model: torch.nn.Module) -> None:
    """Refuse a model whose image features cannot be cached."""
    name = type(model).__name__
    if not callable(getattr(model, 'image_features', None)):
        raise FeatureCacheError(f'{name} has no image_features(): only a model with a locked '
                                f'image tower (LiT) can have its image features cached')
    if not getattr(model, 'image_tower_locked', False):
        raise FeatureCacheError(f'the image tower of {name} must be locked '
                                f'(model.lock_cfg=dict(backbone=True)): the features of a '
                                f'tower that trains change during training')
    pooling = getattr(getattr(model, 'image_head', None), 'pooling', None)
    if pooling == 'attention':
        raise FeatureCacheError(f'{name} pools with attention, which trains on the tokens; '
                                f"cached features need image_head.pooling='mean' or "
                                f"'cls_token'")


@contextmanager
def _quiet_mmengine_logger():
    """Hide mmengine's per-parameter initialisation report."""
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel('WARNING')
    try:
        yield
    finally:
        logger.setLevel(level)


def build_model(cfg: Config, checkpoint: Optional[str], device: str,
                log: Callable[[str], None] = print) -> torch.nn.Module:
    """Build the config's model (refusing one unfit for caching), load ``checkpoint``, and put
    it in eval mode on ``device``."""
    from mmpretrain.registry import MODELS

    from rils_mm.models.utils.checkpoint_loading import load_checked, loads_pretrained

    # Parts no checkpoint covers start from a seeded initialisation, so a resumed run matches.
    torch.manual_seed(int((cfg.get('randomness') or {}).get('seed') or 0))
    model = MODELS.build(cfg.model)
    check_model(model)
    with _quiet_mmengine_logger():
        model.init_weights()
    if checkpoint:
        report = load_checked(model, checkpoint, prefix='', logger=None)
        log(report.summary().splitlines()[0])
    elif not loads_pretrained((cfg.model.get('backbone') or {}).get('init_cfg')):
        log('warning: no --checkpoint and no init_cfg on the image tower: caching the '
            'features of a randomly initialised tower')
    return model.to(device).eval()


def compute_features(model: torch.nn.Module, images: List[torch.Tensor]) -> np.ndarray:
    """The image tower's features of one batch.

    Args:
        model (nn.Module): A model with ``data_preprocessor`` and ``image_features``.
        images (list[torch.Tensor]): B images, 3 x H x W uint8, all of one size.

    Returns:
        np.ndarray: B x C float32.
    """
    shapes = sorted({tuple(image.shape) for image in images})
    if len(shapes) > 1:
        raise FeatureCacheError(f'cache_pipeline gives images of different sizes {shapes}; '
                                f'end it with a fixed-size crop (CenterCrop)')
    with torch.no_grad():
        inputs = model.data_preprocessor(dict(inputs=dict(images=torch.stack(images))),
                                         False)['inputs']
        normalised = inputs['images'] if isinstance(inputs, dict) else inputs
        features = model.image_features(normalised)
    if features.ndim != 2 or features.shape[0] != len(images):
        raise FeatureCacheError(f'image_features returned shape {tuple(features.shape)} for '
                                f'{len(images)} images; expected B x C')
    return features.float().cpu().numpy()


def _npy_bytes(vector: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(vector), allow_pickle=False)
    return buffer.getvalue()


# ------------------------------------------------------------------------ output folder state
def _write_json(path: str, value: dict) -> None:
    """Replace ``path`` atomically (temporary file, then ``os.replace``)."""
    atomic_write_bytes(json.dumps(value, indent=1, sort_keys=True).encode('utf-8') + b'\n', path)


def _is_cache_file(name: str) -> bool:
    """Whether ``name`` is a file this cache writes (final or partial)."""
    base = name.split('.partial', 1)[0]
    return bool(_SHARD_FILE.match(base)) or base in (PROGRESS_FILE, CACHE_INFO_FILE, SIZES_FILE)


def _remove_cache_files(out_dir: str, keep_shards_below: int = 0) -> None:
    """Remove this cache's files, keeping the committed shards numbered below
    ``keep_shards_below`` and ``progress.json`` when any are kept."""
    if not osp.isdir(out_dir):
        return
    for name in sorted(os.listdir(out_dir)):
        if not _is_cache_file(name):
            continue
        shard = _SHARD_FILE.match(name)
        if shard and int(shard.group(1)) < keep_shards_below:
            continue
        if keep_shards_below and name == PROGRESS_FILE:
            continue
        os.remove(osp.join(out_dir, name))


def plan_output(out_dir: str, settings: dict, overwrite: bool):
    """What to do with ``out_dir``: ``('fresh', None)``, ``('resume', progress)`` or
    ``('complete', progress)``; refuses a cache written with other settings (unless
    ``overwrite``) and a folder of shards this tool did not write."""
    path = osp.join(out_dir, PROGRESS_FILE)
    if osp.isfile(path):
        try:
            with open(path) as file:
                progress = json.load(file)
        except ValueError as error:
            if overwrite:
                return 'fresh', None
            raise FeatureCacheError(f'{path} is unreadable ({error}); pass --overwrite to '
                                    f'start over') from None
        recorded = progress.get('settings', {})
        # A setting the cache predates (weight_files) is not compared: unknown, not changed.
        changed = {key: (recorded.get(key), value) for key, value in settings.items()
                   if key in recorded and recorded[key] != value}
        if changed and not overwrite:
            described = '; '.join(_describe_change(key, old, new)
                                  for key, (old, new) in changed.items())
            raise FeatureCacheError(
                f'{out_dir} holds a feature cache made with other settings ({described}); '
                f'rerun with the same arguments to resume it, or pass --overwrite to start '
                f'over')
        if overwrite:
            return 'fresh', None
        lost = [name for name in sorted(progress.get('sizes', {}))
                if not osp.isfile(osp.join(out_dir, name))]
        if lost:
            raise FeatureCacheError(f'{out_dir}/{lost[0]} is missing, though {PROGRESS_FILE} '
                                    f'says it was written; pass --overwrite to start over')
        return ('complete' if progress.get('complete') else 'resume'), progress
    present = [name for name in sorted(os.listdir(out_dir))
               if _is_cache_file(name)] if osp.isdir(out_dir) else []
    if present and not overwrite:
        raise FeatureCacheError(f'{out_dir} already holds {present[0]} but no {PROGRESS_FILE} '
                                f'(not a feature cache in progress); choose another --out or '
                                f'pass --overwrite')
    return 'fresh', None


def _describe_change(key: str, old, new) -> str:
    """What a changed setting means, for the refusal."""
    if key == 'config_sha256':
        return "the config's model, train_dataloader.dataset or cache_pipeline changed"
    if key == 'weight_files':
        paths = sorted(path for path in set(old or {}) | set(new or {})
                       if (old or {}).get(path) != (new or {}).get(path))
        more = f' (and {len(paths) - 1} more)' if len(paths) > 1 else ''
        return f'the weight file {paths[0]} changed (size or modification time){more}'
    return f'{key} was {old!r}, now {new!r}'


def _bad_total(bad: Dict[str, int]) -> int:
    """Samples lost (unreadable shards count by their estimated samples, not once more)."""
    return sum(count for reason, count in bad.items() if reason != UNREADABLE_SHARD)


def _describe_bad(bad: Dict[str, int]) -> str:
    if not bad:
        return 'none'
    return ', '.join(f'{reason}={count}' for reason, count in sorted(bad.items()))


# ---------------------------------------------------------------------------------- caching
def cache_image_features(model: torch.nn.Module,
                         source,
                         out_dir: str,
                         settings: dict,
                         progress: Optional[dict] = None,
                         info: Optional[dict] = None,
                         log: Callable[[str], None] = print) -> dict:
    """Run the locked image tower over ``source`` and write the feature shards.

    Args:
        model (nn.Module): Eval-mode model with ``image_features``.
        source: :class:`ShardStreamSource` or :class:`MapStyleSource`.
        out_dir (str): Output folder.
        settings (dict): What determines the output; must hold ``samples_per_shard``,
            ``batch_size`` and ``dtype``. Stored in ``progress.json``.
        progress (dict, optional): ``progress.json`` of an interrupted run to continue.
        info (dict, optional): Extra entries for ``cache_info.json``.
        log (callable): Where progress lines go.

    Returns:
        dict: The final ``progress.json`` content.
    """
    samples_per_shard, batch_size = settings['samples_per_shard'], settings['batch_size']
    dtype = DTYPES[settings['dtype']]
    state = dict(next_shard=0, position=0, bad={}, bad_shards=[], sizes={}, feature_dims=None)
    state.update(progress or {})
    state.update(settings=settings, complete=False)
    bad = Counter(state['bad'])
    writer = ShardWriter(out_dir, samples_per_shard, SHARD_NAME, commit_each_shard=True,
                         first_index=state['next_shard'], sizes=state['sizes'])
    batch: List[CachedSample] = []
    in_shard = 0  # samples in the open shard
    lines_left = MAX_BAD_SAMPLE_LINES

    def run_batch() -> None:
        nonlocal in_shard
        features = compute_features(model, [sample.image for sample in batch])
        if state['feature_dims'] not in (None, features.shape[1]):
            raise FeatureCacheError(f'feature width changed from {state["feature_dims"]} to '
                                    f'{features.shape[1]}')
        state['feature_dims'] = int(features.shape[1])
        for sample, vector in zip(batch, features):
            writer.write(sample.key, dict(npy=_npy_bytes(vector.astype(dtype)),
                                          txt=sample.caption, json=sample.meta))
        in_shard += len(batch)
        batch.clear()

    def commit(position: int) -> None:
        """Move the open shard into place, then record where the source stands after it."""
        nonlocal in_shard
        path = writer.finish_shard()
        state.update(next_shard=state['next_shard'] + 1, position=position, bad=dict(bad),
                     sizes=dict(writer.sizes))
        _write_json(osp.join(out_dir, PROGRESS_FILE), state)
        in_shard = 0
        log(f'{osp.basename(path)}: {sum(writer.sizes.values())} samples cached, '
            f'{_bad_total(bad)} bad so far')

    end_position = state['position']
    progress_bar = Progress(getattr(source, 'total', None), 'cache_image_features', 'sample',
                            initial=end_position)
    try:
        for entry in source.entries(state['position']):
            progress_bar.update(entry.position - end_position)
            end_position = entry.position
            if entry.bad:
                bad.update(entry.bad)
                if entry.bad_shard:
                    state['bad_shards'].append(entry.bad_shard)
                if lines_left > 0:
                    lines_left -= 1
                    what = 'unreadable shard (or its tail)' if entry.bad_shard else 'bad sample'
                    log(f'skipping {what}: {entry.detail}' +
                        ('' if lines_left else ' (further ones are only counted)'))
            if entry.sample is None:
                continue
            batch.append(entry.sample)
            # Batches end at shard ends, so a resumed run forms the same batches.
            if len(batch) == min(batch_size, samples_per_shard - in_shard):
                run_batch()
                if in_shard == samples_per_shard:
                    commit(entry.position)
        if batch:
            run_batch()
        if in_shard:
            commit(end_position)  # the source is exhausted: nothing after it is left to read
        writer.close()
    except BaseException:
        writer.abort()  # the open shard only; committed ones stay for the resume
        raise
    finally:
        progress_bar.close()
    state.update(position=end_position, bad=dict(bad), sizes=dict(writer.sizes))
    num_samples, num_shards = sum(state['sizes'].values()), len(state['sizes'])
    cache_info = dict(info or {})
    cache_info.update(
        dtype=settings['dtype'], feature_dims=state['feature_dims'], num_samples=num_samples,
        num_shards=num_shards, samples_per_shard=samples_per_shard, batch_size=batch_size,
        bad_samples=_bad_total(bad), bad_reasons=dict(bad), unreadable_shards=state['bad_shards'])
    _write_json(osp.join(out_dir, CACHE_INFO_FILE), cache_info)
    state['complete'] = True
    _write_json(osp.join(out_dir, PROGRESS_FILE), state)
    unreadable = bad.pop(UNREADABLE_SHARD, 0)
    log(f'cached {num_samples} samples in {num_shards} shard(s) to {out_dir} '
        f'({state["feature_dims"]} {settings["dtype"]} features each); bad samples: '
        f'{_bad_total(bad)} ({_describe_bad(bad)})'
        + (f'; unreadable shards: {unreadable}' if unreadable else ''))
    return state


def _is_local(path: str) -> bool:
    return not path.startswith(URL_PREFIXES)


def output_settings(cfg: Config, config: str, checkpoint: Optional[str], samples_per_shard: int,
                    batch_size: int, dtype: str, device: str) -> dict:
    """The arguments that determine the cache's bytes; a resume must match them."""
    dataset_cfg = source_config(cfg)
    for key in list(_STREAM_OVERRIDES) + ['shuffle_buffer']:
        dataset_cfg.pop(key, None)
    # The parts of the config that shape the output (the model, the data and its pipeline).
    content = json.dumps(dict(model=_to_plain(cfg.model), dataset=dataset_cfg), sort_keys=True)
    if checkpoint and _is_local(checkpoint):
        checkpoint = osp.abspath(checkpoint)
    return dict(config=osp.abspath(config),
                config_sha256=hashlib.sha256(content.encode('utf-8')).hexdigest(),
                checkpoint=checkpoint, weight_files=weight_files(cfg.model, checkpoint),
                samples_per_shard=samples_per_shard, batch_size=batch_size, dtype=dtype,
                device=device)


def weight_files(model_cfg, checkpoint: Optional[str]) -> Dict[str, dict]:
    """Size and modification time of the local weight files the model loads: ``checkpoint``
    and every ``checkpoint`` of the model config (``init_cfg``). Weights retrained into the
    same path change the features, so they must change the settings too."""
    paths = [checkpoint] if checkpoint else []

    def collect(node) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == 'checkpoint' and isinstance(value, str):
                    paths.append(value)
                else:
                    collect(value)
        elif isinstance(node, list):
            for value in node:
                collect(value)

    collect(_to_plain(model_cfg))
    files = {}
    for path in paths:
        if _is_local(path) and osp.isfile(path):
            stat = os.stat(path)
            files[osp.abspath(path)] = dict(size=stat.st_size, mtime_ns=stat.st_mtime_ns)
    return files


def cache_from_config(config: str,
                      out_dir: str,
                      checkpoint: Optional[str] = None,
                      batch_size: int = 128,
                      samples_per_shard: int = 10000,
                      dtype: str = 'float32',
                      cfg_options: Optional[dict] = None,
                      device: Optional[str] = None,
                      overwrite: bool = False,
                      log: Callable[[str], None] = print) -> dict:
    """Everything ``tools/cache_image_features.py`` does (see the module docs).

    Raises:
        FeatureCacheError: A refusal or a mistake in the arguments or the config, in one line.

    Returns:
        dict: The final ``progress.json`` content.
    """
    from mmengine.registry import init_default_scope

    if dtype not in DTYPES:
        raise FeatureCacheError(f'dtype must be one of {sorted(DTYPES)}, got {dtype!r}')
    if batch_size < 1 or samples_per_shard < 1:
        raise FeatureCacheError(f'batch size and samples per shard must be >= 1, got '
                                f'{batch_size} and {samples_per_shard}')
    if not osp.isfile(config):
        raise FeatureCacheError(f'config file not found: {config}')
    if checkpoint and _is_local(checkpoint) and not osp.isfile(checkpoint):
        raise FeatureCacheError(f'checkpoint file not found: {checkpoint}')
    try:  # unknown top-level keys and mistyped values in cfg_options are refused
        cfg = load_config(config, cfg_options)
    except UsageError as error:
        raise FeatureCacheError(str(error)) from None
    device = str(torch.device(device or ('cuda' if torch.cuda.is_available() else 'cpu')))
    settings = output_settings(cfg, config, checkpoint, samples_per_shard, batch_size, dtype,
                               device)
    action, progress = plan_output(out_dir, settings, overwrite)
    if action == 'complete':
        log(f'{out_dir}: already complete ({sum(progress["sizes"].values())} samples in '
            f'{len(progress["sizes"])} shard(s)); nothing to do')
        return progress

    init_default_scope(cfg.get('default_scope', 'mmpretrain'))
    try:
        model = build_model(cfg, checkpoint, device, log)
        source = build_source(source_config(cfg))
    except BUILD_ERRORS as error:  # an unknown key or a bad value in the config
        raise FeatureCacheError(str(as_usage_error(error, config))) from error
    if action == 'resume':
        _remove_cache_files(out_dir, keep_shards_below=progress['next_shard'])
        log(f'resuming {out_dir} at shard {SHARD_NAME.format(progress["next_shard"])}: '
            f'{sum(progress["sizes"].values())} samples cached, '
            f'{_bad_total(progress["bad"])} bad so far')
    else:
        _remove_cache_files(out_dir)
    info = dict(config=config, checkpoint=checkpoint, cfg_options=_to_plain(cfg_options or {}),
                model=type(model).__name__, source=source.describe(), device=device)
    return cache_image_features(model, source, out_dir, settings, progress, info, log)
