"""A zero-shot test set of ours written as a clip_benchmark webdataset, so that clip_benchmark's
own command line evaluates an exported model (``tools/model_converters/rils_to_open_clip.py``)
on exactly the images and texts ``tools/test.py`` scores.

clip_benchmark's layout (``clip_benchmark/datasets/builder.py``, ``build_wds_dataset``)::

    OUT_DIR/test/0.tar ... test/{n-1}.tar   samples: <key>.png|jpg|jpeg|webp + <key>.cls | .txt
    OUT_DIR/test/nshards.txt                n    (test/sizes.json too: ShardWriter's, unread)
    OUT_DIR/dataset_type.txt                'classification' or 'retrieval'
    OUT_DIR/classnames.txt                  classification: one name a line, in label order
    OUT_DIR/zeroshot_classification_templates.txt   one template a line, '{c}' for the name

A classification sample's ``.cls`` is its label; a retrieval sample's ``.txt`` holds its
captions, one a line. The config is a test config of ours: a ``ZeroShotClassifier`` (its
``classnames`` and ``templates``; ``{}`` becomes clip_benchmark's ``{c}``) or a
``ZeroShotRetriever``, and its ``test_dataloader.dataset`` gives the images and labels or
captions.

Ties: where two images have word-for-word the same caption, the two texts' embeddings are equal
and so are their scores. Our retrieval metric counts such a tie in the query's favour;
clip_benchmark's ``torch.topk`` picks one of the tied texts by position, so its image->text
recall can be lower on the same embeddings. ``distinct_captions`` keeps the first image of
each distinct caption set and writes the same images as a Karpathy split file
(``karpathy_test.json``) for ``tools/test.py``: with no tied texts both tools count the same.
"""
import io
import json
import os
import os.path as osp
from typing import Dict, List, Optional, Tuple

from mmengine.config import Config

from .arguments import UsageError

# The image suffixes clip_benchmark's webdataset loader decodes.
IMAGE_SUFFIXES = ('webp', 'png', 'jpg', 'jpeg')
TASKS = {'ZeroShotClassifier': 'classification', 'ZeroShotRetriever': 'retrieval'}
KARPATHY_FILE = 'karpathy_test.json'


def task_of(cfg: Config, config: str) -> str:
    """``'classification'`` or ``'retrieval'`` from the config's model type."""
    model_type = cfg.get('model', {}).get('type')
    if model_type not in TASKS:
        raise UsageError(
            f'{config}: model.type is {model_type!r}; expected a zero-shot test config, '
            f'ZeroShotClassifier (e.g. configs/rils/demo_cpu_zeroshot.py) or ZeroShotRetriever '
            f'(e.g. configs/rils/demo_cpu_retrieval.py)')
    if model_type == 'ZeroShotClassifier':
        for key in ('class_subset', 'class_groups'):
            if cfg.model.get(key) is not None:
                raise UsageError(
                    f'{config}: model.{key} is set; clip_benchmark scores every class of '
                    f'classnames.txt and has no {key}: write that set with its own class list')
    return TASKS[model_type]


def clip_benchmark_template(template: str) -> str:
    """Our template (``str.format`` with one ``{}``, as open_clip's
    ``build_zero_shot_classifier`` fills it; checked by ``load_templates``) as clip_benchmark's,
    which it fills with ``template.format(c=name)``: the field becomes ``{c}`` and other braces
    stay escaped."""
    from ..datasets.resources import template_parts
    return ''.join(literal.replace('{', '{{').replace('}', '}}') + ('' if field is None else '{c}')
                   for literal, field, _, _ in template_parts(template))


def image_bytes(path: str) -> Tuple[bytes, str]:
    """An image file's bytes and a suffix clip_benchmark decodes; other formats (BMP, TIFF,
    ...) are re-encoded losslessly as PNG."""
    from mmengine import fileio
    try:
        data = fileio.get(path)
    except FileNotFoundError:
        raise UsageError(f'image not found: {path}') from None
    suffix = osp.splitext(path)[1].lstrip('.').lower()
    if suffix in IMAGE_SUFFIXES:
        return data, suffix
    from PIL import Image, UnidentifiedImageError
    buffer = io.BytesIO()
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            try:
                image.save(buffer, format='PNG')
            except OSError as err:  # e.g. a CMYK TIFF: PNG has no such mode
                raise UsageError(f'{path}: cannot re-encode it as PNG ({err}); convert it to '
                                 f'PNG or JPEG first') from None
    except UnidentifiedImageError:
        raise UsageError(f'{path}: not an image PIL decodes') from None
    except OSError as err:  # a truncated or damaged file of a known format
        raise UsageError(f'{path}: not an image PIL decodes ({err})') from None
    return buffer.getvalue(), 'png'


def samples_of(dataset, task: str) -> List[Tuple[str, object]]:
    """``(image path, label | list of captions)`` for every item of a built test dataset."""
    samples = []
    for index in range(len(dataset)):
        info = dataset.get_data_info(index)
        if task == 'classification':
            if info.get('gt_label') is None:
                raise UsageError(f'test item {index} ({info.get("img_path")}) has no gt_label; '
                                 f'zero-shot classification needs a label per image')
            samples.append((info['img_path'], int(info['gt_label'])))
        else:
            captions = info.get('text')
            captions = [captions] if isinstance(captions, str) else list(captions or [])
            if not captions:
                raise UsageError(f'test item {index} ({info.get("img_path")}) has no captions')
            for caption in captions:
                # clip_benchmark reads a sample's captions with str.splitlines.
                if caption.splitlines() != [caption]:
                    raise UsageError(f'test item {index} ({info.get("img_path")}): caption '
                                     f'{caption!r} is empty or spans lines; clip_benchmark '
                                     f'reads one caption a line')
            samples.append((info['img_path'], captions))
    return samples


def keep_distinct_captions(samples: List[Tuple[str, List[str]]]) -> List[Tuple[str, List[str]]]:
    """The first image of each distinct caption set, in order (see the module's note on ties)."""
    seen, kept = set(), []
    for image, captions in samples:
        key = tuple(captions)
        if key not in seen:
            seen.add(key)
            kept.append((image, captions))
    return kept


def write_shards(out_dir: str, samples: List[Tuple[str, object]], task: str,
                 shard_size: int) -> int:
    """Write ``test/{i}.tar`` (with the project's :class:`ShardWriter`) and then
    ``test/nshards.txt``, the file that marks the set complete (the caller writes the others
    first); the number of shards."""
    from ..datasets.shard_tools import ShardWriter
    split_dir = osp.join(out_dir, 'test')
    target_ext = 'cls' if task == 'classification' else 'txt'
    # clip_benchmark opens test/{0..n-1}.tar: shard numbers without zero padding.
    with ShardWriter(split_dir, shard_size, name_format='{}.tar') as writer:
        for index, (image, target) in enumerate(samples):
            data, suffix = image_bytes(image)
            writer.write(f'{index:08d}', {
                suffix: data,
                target_ext: str(target) if task == 'classification' else '\n'.join(target)})
    write_text(osp.join(split_dir, 'nshards.txt'), [str(len(writer.paths))])
    return len(writer.paths)


def write_text(path: str, lines: List[str]) -> None:
    with open(path, 'w') as f:
        f.write('\n'.join(lines) + '\n')


def write_karpathy(path: str, samples: List[Tuple[str, List[str]]]) -> None:
    """The samples as a Karpathy split file (split ``test``) that ``KarpathyRetrieval`` reads;
    local image paths are absolute, so the dataset's ``data_prefix`` does not change them, and
    remote ones (``s3://...``, read through ``mmengine.fileio``) stay as they are."""
    images = [dict(filepath=osp.dirname(image if '://' in image else osp.abspath(image)),
                   filename=osp.basename(image),
                   imgid=index, split='test',
                   sentences=[dict(raw=caption) for caption in captions])
              for index, (image, captions) in enumerate(samples)]
    with open(path, 'w') as f:
        json.dump(dict(images=images), f)


def classes_and_templates(cfg: Config, samples: List[Tuple[str, int]]
                          ) -> Tuple[List[str], List[str]]:
    """The class names (checked against the labels) and the templates in clip_benchmark's
    form, from the ``ZeroShotClassifier``'s files (its defaults where the config names none)."""
    import inspect

    from ..datasets.resources import load_classnames, load_templates
    from ..models.algorithms.zero_shot import ZeroShotClassifier
    defaults = inspect.signature(ZeroShotClassifier.__init__).parameters
    files = {key: cfg.model.get(key) or defaults[key].default
             for key in ('classnames', 'templates')}
    try:
        classnames = load_classnames(files['classnames'])
        templates = load_templates(files['templates'])
    except (FileNotFoundError, ValueError) as err:  # the messages name the file
        raise UsageError(f'model.classnames / model.templates: {err}') from None
    labels = sorted({label for _, label in samples})
    if labels[0] < 0 or labels[-1] >= len(classnames):
        raise UsageError(f'labels {labels[0]}..{labels[-1]} of the test set do not index '
                         f'the {len(classnames)} names of {files["classnames"]}')
    return classnames, [clip_benchmark_template(template) for template in templates]


def samples_of_config(cfg: Config, config: str, task: str) -> List[Tuple[str, object]]:
    """``(image path, label | captions)`` of the config's ``test_dataloader.dataset``."""
    from mmengine.registry import init_default_scope
    from mmpretrain.registry import DATASETS
    dataset_cfg = cfg.get('test_dataloader', {}).get('dataset')
    if not dataset_cfg:
        raise UsageError(f'{config} has no test_dataloader.dataset; expected a zero-shot test '
                         f'config such as configs/rils/demo_cpu_zeroshot.py')
    init_default_scope(cfg.get('default_scope', 'mmpretrain'))
    dataset_cfg = dict(dataset_cfg, pipeline=[])  # the files are copied, not transformed
    try:
        dataset = DATASETS.build(dataset_cfg)
    except (FileNotFoundError, ValueError, KeyError) as err:
        ann_file = dataset_cfg.get('ann_file')
        where = f' (ann_file {ann_file})' if ann_file and str(ann_file) not in str(err) else ''
        raise UsageError(f'{config}: test_dataloader.dataset{where}: {err}') from None
    samples = samples_of(dataset, task)
    if not samples:
        raise UsageError(f'{config}: test_dataloader.dataset has no images '
                         f'(ann_file {dataset_cfg.get("ann_file")})')
    return samples


def check_out_dir(out_dir: str) -> None:
    """Refuse a file, or a folder that already holds a complete set (``test/nshards.txt`` is
    written last, so an interrupted run leaves none and can simply be run again)."""
    if osp.exists(out_dir) and not osp.isdir(out_dir):
        raise UsageError(f'{out_dir} is a file; OUT_DIR must be a folder (it is created)')
    if osp.exists(osp.join(out_dir, 'test', 'nshards.txt')):
        raise UsageError(f'{out_dir} already holds a clip_benchmark set (test/nshards.txt); '
                         f'choose another folder or delete it')


def write_clip_benchmark_set(cfg: Config, config: str, out_dir: str,
                             distinct_captions: bool = False,
                             shard_size: int = 1000) -> Dict[str, object]:
    """Write the config's zero-shot test set in clip_benchmark's layout (module docstring).

    Returns:
        dict: ``task``, ``num_samples``, ``num_shards``, and ``karpathy_file`` (the same
        images for ``tools/test.py``, an absolute path, with ``distinct_captions``) or None.
    """
    task = task_of(cfg, config)
    if distinct_captions and task != 'retrieval':
        raise UsageError('--distinct-captions is for a retrieval config (ZeroShotRetriever)')
    if shard_size < 1:
        raise UsageError(f'--shard-size must be at least 1, got {shard_size}')
    check_out_dir(out_dir)
    samples = samples_of_config(cfg, config, task)
    if distinct_captions:
        samples = keep_distinct_captions(samples)
    if task == 'classification':
        classnames, templates = classes_and_templates(cfg, samples)
    karpathy_file: Optional[str] = None
    try:
        os.makedirs(out_dir, exist_ok=True)
        if task == 'classification':
            write_text(osp.join(out_dir, 'classnames.txt'), classnames)
            write_text(osp.join(out_dir, 'zeroshot_classification_templates.txt'), templates)
        write_text(osp.join(out_dir, 'dataset_type.txt'), [task])
        if distinct_captions:
            # Absolute: the dataset joins a relative ann_file to its data_root.
            karpathy_file = osp.abspath(osp.join(out_dir, KARPATHY_FILE))
            write_karpathy(karpathy_file, samples)
        num_shards = write_shards(out_dir, samples, task, shard_size)
    except (PermissionError, FileExistsError, NotADirectoryError) as err:
        raise UsageError(f'cannot write {err.filename}: {err.strerror}; choose another '
                         f'OUT_DIR') from None
    return dict(task=task, num_samples=len(samples), num_shards=num_shards,
                karpathy_file=karpathy_file)


def to_clip_benchmark_main(argv: Optional[List[str]] = None) -> None:
    """``tools/dataset_converters/to_clip_benchmark.py CONFIG OUT_DIR [options]``."""
    import argparse
    import shlex

    from mmengine.config import DictAction

    from .cli import load_config
    parser = argparse.ArgumentParser(
        prog='tools/dataset_converters/to_clip_benchmark.py',
        description="Write a zero-shot test config's images and labels or captions as a "
        "clip_benchmark webdataset (test/{i}.tar, nshards.txt, dataset_type.txt, class names "
        "and templates), for `clip_benchmark eval --dataset wds/NAME --dataset_root OUT_DIR`.")
    parser.add_argument('config', help='a ZeroShotClassifier or ZeroShotRetriever test config')
    parser.add_argument('out_dir', help='folder to write (created; must not hold a set)')
    parser.add_argument('--distinct-captions', action='store_true',
                        help='retrieval: keep the first image of each distinct caption set (no '
                        'tied texts), and write the same images as karpathy_test.json for '
                        'tools/test.py')
    parser.add_argument('--shard-size', type=int, default=1000,
                        help='samples per tar file (default 1000)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default=None,
                        help='override settings of the config, as tools/test.py does')
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.cfg_options)
    written = write_clip_benchmark_set(cfg, args.config, args.out_dir, args.distinct_captions,
                                       args.shard_size)
    task = written['task']
    print(f'wrote {args.out_dir}: {written["num_samples"]} {task} samples in '
          f'{written["num_shards"]} shard(s)')
    print(f'  clip_benchmark eval --dataset wds/NAME --dataset_root {shlex.quote(args.out_dir)} '
          f'--task zeroshot_{task} --model local-dir:EXPORTED_DIR --pretrained ""')
    if written['karpathy_file']:
        print(f'  the same images for tools/test.py: --cfg-options '
              f'test_dataloader.dataset.ann_file={shlex.quote(written["karpathy_file"])}')
