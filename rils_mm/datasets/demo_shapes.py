"""A generated, deterministic captioned-image dataset for the README demo and tests.

Each image shows one coloured shape of some size at some position on a plain background, with
a compositional caption such as "a large red circle on the left". Some (colour, shape) pairs
never occur in training: they form the ``heldout`` split, so zero-shot classification over
the ``"<colour> <shape>"`` classes measures compositional generalisation. Layout under
``root`` (``data/demo_shapes`` by default)::

    train/00000.tar ...      img2dataset-style shards (KEY.jpg, KEY.txt, KEY.json), sizes.json
    val/images/*.png         seen (colour, shape) pairs, new images
    val.jsonl, val.tsv       filepath (relative to val/), caption, label, classname
    heldout/images/*.png     unseen pairs
    heldout.jsonl, heldout.tsv
    classnames.txt           "<colour> <shape>" per line; line i is label i
    meta.json                generation settings, the training shards and held-out pairs

The folder is written beside ``root`` and renamed into place when complete; ``meta.json``
records the settings, and asking for other settings on an existing folder is an error
(delete the folder or choose another one) rather than a mix of old and new files.

A few thousand 64 px images take a couple of seconds to generate.
"""
import csv
import inspect
import io
import json
import os
import os.path as osp
import re
import shutil
from typing import Dict, List, Optional, Tuple

import numpy as np
from mmengine.dist import barrier, get_dist_info
from PIL import Image, ImageDraw
from mmpretrain.registry import DATASETS

from .image_text_shards import ImageTextShardDataset
from .shard_tools import ShardWriter

COLOURS: Dict[str, Tuple[int, int, int]] = {
    'red': (220, 40, 40),
    'green': (40, 170, 60),
    'blue': (40, 80, 220),
    'yellow': (235, 200, 30),
    'purple': (140, 60, 190),
    'orange': (245, 130, 20),
}
SHAPES = ('circle', 'square', 'triangle', 'diamond', 'cross')
SIZES = {'small': 0.14, 'large': 0.27}  # shape radius as a fraction of the image side
POSITIONS = {
    'left': ((0.3, 0.5), 'on the left'),
    'right': ((0.7, 0.5), 'on the right'),
    'top': ((0.5, 0.3), 'at the top'),
    'bottom': ((0.5, 0.7), 'at the bottom'),
    'center': ((0.5, 0.5), 'in the center'),
}
TEMPLATES = ('a {size} {colour} {shape} {where}', 'a photo of a {size} {colour} {shape} {where}',
             'a {colour} {shape}, {size}, {where}')
FORMAT_VERSION = 3  # 3: meta.json lists train_shards


def class_names() -> List[str]:
    """All ``"<colour> <shape>"`` classes; the index is the label."""
    return [f'{colour} {shape}' for colour in COLOURS for shape in SHAPES]


def heldout_pairs() -> List[Tuple[str, str]]:
    """The (colour, shape) pairs kept out of training: one per colour, each shape used too."""
    colours = list(COLOURS)
    return [(colour, SHAPES[(index + 2) % len(SHAPES)]) for index, colour in enumerate(colours)]


def _shape_polygon(shape: str, cx: float, cy: float, r: float) -> List[Tuple[float, float]]:
    if shape == 'square':
        return [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == 'triangle':
        return [(cx, cy - r), (cx + r * 0.95, cy + r * 0.8), (cx - r * 0.95, cy + r * 0.8)]
    if shape == 'diamond':
        return [(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)]
    if shape == 'cross':
        t = r * 0.38
        return [(cx - t, cy - r), (cx + t, cy - r), (cx + t, cy - t), (cx + r, cy - t),
                (cx + r, cy + t), (cx + t, cy + t), (cx + t, cy + r), (cx - t, cy + r),
                (cx - t, cy + t), (cx - r, cy + t), (cx - r, cy - t), (cx - t, cy - t)]
    raise ValueError(f'Unknown shape {shape!r}; expected one of {SHAPES}')


def render_shape(colour: str, shape: str, size: str, position: str, image_size: int,
                 rng: np.random.Generator) -> Image.Image:
    """Draw one shape with a little jitter in place, size and background tint."""
    background = tuple(int(v) for v in rng.integers(200, 256, size=3))
    image = Image.new('RGB', (image_size, image_size), background)
    draw = ImageDraw.Draw(image)
    (fx, fy), _ = POSITIONS[position]
    jitter = rng.uniform(-0.04, 0.04, size=3)
    cx, cy = (fx + jitter[0]) * image_size, (fy + jitter[1]) * image_size
    r = (SIZES[size] + jitter[2] / 2) * image_size
    fill = tuple(int(np.clip(c + d, 0, 255)) for c, d in
                 zip(COLOURS[colour], rng.integers(-15, 16, size=3)))
    if shape == 'circle':
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        draw.polygon(_shape_polygon(shape, cx, cy, r), fill=fill)
    return image


def sample_scene(pairs: List[Tuple[str, str]], rng: np.random.Generator) -> dict:
    """Pick a (colour, shape) pair, size, position and caption template."""
    colour, shape = pairs[rng.integers(len(pairs))]
    size = list(SIZES)[rng.integers(len(SIZES))]
    position = list(POSITIONS)[rng.integers(len(POSITIONS))]
    caption = TEMPLATES[rng.integers(len(TEMPLATES))].format(
        size=size, colour=colour, shape=shape, where=POSITIONS[position][1])
    caption = re.sub(r'\ba (?=[aeiou])', 'an ', caption)  # "an orange ..."

    return dict(colour=colour, shape=shape, size=size, position=position, caption=caption,
                classname=f'{colour} {shape}', label=class_names().index(f'{colour} {shape}'))


def _write_eval_split(root: str, split: str, pairs, count: int, image_size: int,
                      rng: np.random.Generator) -> None:
    os.makedirs(osp.join(root, split, 'images'), exist_ok=True)
    records = []
    for index in range(count):
        scene = sample_scene(pairs, rng)
        filepath = f'images/{index:06d}.png'
        render_shape(scene['colour'], scene['shape'], scene['size'], scene['position'],
                     image_size, rng).save(osp.join(root, split, filepath))
        records.append(dict(filepath=filepath, caption=scene['caption'], label=scene['label'],
                            classname=scene['classname']))
    with open(osp.join(root, f'{split}.jsonl'), 'w') as file:
        for record in records:
            file.write(json.dumps(record) + '\n')
    with open(osp.join(root, f'{split}.tsv'), 'w', newline='') as file:
        writer = csv.DictWriter(file, fieldnames=list(records[0]), delimiter='\t')
        writer.writeheader()
        writer.writerows(records)
    # The same split in Karpathy's format, for the retrieval evaluation (KarpathyRetrieval).
    karpathy = dict(images=[
        dict(filepath=osp.dirname(record['filepath']), filename=osp.basename(record['filepath']),
             imgid=index, split='test', sentences=[dict(raw=record['caption'], sentid=index)])
        for index, record in enumerate(records)
    ])
    with open(osp.join(root, f'{split}_karpathy.json'), 'w') as file:
        json.dump(karpathy, file)


def zero_shot_templates() -> List[str]:
    """Prompt templates for zero-shot classification over ``class_names()``: the training
    captions' first form with every size and position, the class name in place of
    "<colour> <shape>"."""
    return [f'a {size} {{}} {where}' for size in SIZES for _, where in POSITIONS.values()]


def demo_settings(**kwargs) -> dict:
    """All settings of :func:`generate_demo_shapes` (defaults filled in) and the format."""
    bound = inspect.signature(generate_demo_shapes).bind_partial(**kwargs)
    bound.apply_defaults()
    bound.arguments.pop('root')
    return dict(format_version=FORMAT_VERSION, **bound.arguments)


def read_demo_meta(root: str, settings: Optional[dict] = None) -> dict:
    """The ``meta.json`` of a complete demo dataset, checked against ``settings``.

    Raises:
        FileNotFoundError: ``root`` has no ``meta.json`` (missing, or an interrupted or
            foreign folder).
        ValueError: ``root`` was generated with other settings (names the differences).
    """
    meta_path = osp.join(root, 'meta.json')
    if not osp.isfile(meta_path):
        raise FileNotFoundError(f'{root} holds no meta.json, so it is not a complete demo '
                                f'dataset (an interrupted generation, or another folder); '
                                f'delete it or choose another folder (data_root)')
    with open(meta_path) as file:
        meta = json.load(file)
    differing = [f'{key}={meta.get(key)} instead of {value}'
                 for key, value in (settings or {}).items() if meta.get(key) != value]
    if differing:
        raise ValueError(f'{root} holds demo data generated with other settings: '
                         f'{", ".join(differing)}; delete {root} to regenerate it, or choose '
                         f'another folder (data_root)')
    return meta


def generate_demo_shapes(root: str = 'data/demo_shapes',
                         num_train: int = 4096,
                         num_val: int = 512,
                         num_heldout: int = 512,
                         image_size: int = 64,
                         samples_per_shard: int = 256,
                         seed: int = 0) -> dict:
    """Write the demo dataset under ``root`` (see the module docs); returns its meta dict.

    ``meta.json`` records the settings and lists the training shards. When ``root`` already
    holds a dataset with these settings it is kept as it is; other settings raise instead of
    mixing old and new files. The data is written to a temporary folder beside ``root`` and
    renamed into place when complete, so an interrupted run leaves no ``root``.

    Raises:
        ValueError: ``root`` holds a dataset generated with other settings.
        FileNotFoundError: ``root`` exists, is not empty and holds no ``meta.json``.
    """
    settings = demo_settings(num_train=num_train, num_val=num_val, num_heldout=num_heldout,
                             image_size=image_size, samples_per_shard=samples_per_shard,
                             seed=seed)
    if osp.isdir(root) and os.listdir(root):
        return read_demo_meta(root, settings)
    work = f'{osp.abspath(root)}.incomplete-{os.getpid()}'
    shutil.rmtree(work, ignore_errors=True)  # left by an interrupted run with this pid
    os.makedirs(work)
    try:
        meta = _write_demo_shapes(work, settings)
        os.replace(work, root)  # also replaces an empty root folder
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return meta


def _write_demo_shapes(root: str, settings: dict) -> dict:
    heldout = heldout_pairs()
    seen = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in heldout]
    image_size = settings['image_size']
    rng = np.random.default_rng(settings['seed'])
    with ShardWriter(osp.join(root, 'train'), settings['samples_per_shard']) as writer:
        for index in range(settings['num_train']):
            scene = sample_scene(seen, rng)
            image = render_shape(scene['colour'], scene['shape'], scene['size'],
                                 scene['position'], image_size, rng)
            buffer = io.BytesIO()
            image.save(buffer, format='JPEG', quality=92)
            key = f'{index:09d}'
            writer.write(key, dict(jpg=buffer.getvalue(), txt=scene['caption'],
                                   json=dict(key=key, label=scene['label'],
                                             classname=scene['classname'])))
    _write_eval_split(root, 'val', seen, settings['num_val'], image_size,
                      np.random.default_rng(settings['seed'] + 1))
    _write_eval_split(root, 'heldout', heldout, settings['num_heldout'], image_size,
                      np.random.default_rng(settings['seed'] + 2))
    with open(osp.join(root, 'classnames.txt'), 'w') as file:
        file.write('\n'.join(class_names()) + '\n')
    with open(osp.join(root, 'templates.txt'), 'w') as file:
        file.write('\n'.join(zero_shot_templates()) + '\n')
    # The dataset reads exactly train_shards, never whatever *.tar lies in train/.
    meta = dict(settings, heldout_pairs=[list(pair) for pair in heldout],
                num_shards=len(writer.paths),
                train_shards=[osp.basename(path) for path in writer.paths])
    with open(osp.join(root, 'meta.json'), 'w') as file:
        json.dump(meta, file, indent=1)
    return meta


def ensure_demo_shapes(root: str = 'data/demo_shapes', **kwargs) -> dict:
    """Generate the demo dataset unless ``root`` already holds one with these settings.

    In a distributed run rank 0 generates while the others wait.

    Raises:
        ValueError: ``root`` holds a dataset generated with other settings.
        FileNotFoundError: ``root`` holds something else, or an interrupted generation.
    """
    rank, world_size = get_dist_info()
    if rank == 0:
        generate_demo_shapes(root, **kwargs)
    if world_size > 1:
        barrier()
    return read_demo_meta(root, demo_settings(**kwargs))


@DATASETS.register_module()
class DemoShapesShardDataset(ImageTextShardDataset):
    """The demo's training shards, generated under ``data_root`` on first use.

    Args:
        data_root (str): Dataset folder.
        generate_cfg (dict, optional): Arguments of :func:`generate_demo_shapes`
            (``num_train``, ``image_size``, ...).
        **kwargs: See :class:`ImageTextShardDataset` (``shards`` is set here).
    """

    def __init__(self, data_root: str = 'data/demo_shapes', generate_cfg: Optional[dict] = None,
                 **kwargs) -> None:
        meta = ensure_demo_shapes(data_root, **(generate_cfg or {}))
        super().__init__(shards=[osp.join(data_root, 'train', name)
                                 for name in meta['train_shards']], **kwargs)
