"""The generated demo dataset and the dataset base configs."""
import filecmp
import json
import math
import os
import os.path as osp
import re
import shutil

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmengine.runner import Runner
from mmpretrain.registry import DATASETS, TRANSFORMS

from rils_mm.datasets import DemoShapesShardDataset, demo_shapes, generate_demo_shapes, scan_shard
from rils_mm.datasets.demo_shapes import class_names, heldout_pairs
from rils_mm.datasets.shards import ShardReader

from shard_helpers import write_good_shards

CONFIGS = osp.join(osp.dirname(__file__), '..', '..', 'configs', '_base_', 'datasets')
SMALL = dict(num_train=80, num_val=10, num_heldout=12, image_size=32, samples_per_shard=32)


def test_demo_data_is_deterministic_and_holds_pairs_out(tmp_path):
    meta = generate_demo_shapes(str(tmp_path / 'a'), **SMALL)
    generate_demo_shapes(str(tmp_path / 'b'), **SMALL)
    shards = sorted((tmp_path / 'a' / 'train').glob('*.tar'))
    assert meta['num_shards'] == len(shards) == 3
    for shard in shards:
        assert filecmp.cmp(shard, tmp_path / 'b' / 'train' / shard.name, shallow=False)

    held_out = {f'{colour} {shape}' for colour, shape in heldout_pairs()}
    reader = ShardReader()
    train_classes = set()
    for shard in shards:
        refs, error = scan_shard(str(shard))
        assert error is None
        for ref in refs:
            caption = reader.read(ref, 'txt').decode()
            classname = json.loads(reader.read(ref, 'json'))['classname']
            assert classname.split()[0] in caption and classname.split()[1] in caption
            train_classes.add(classname)
    assert len(train_classes) > 5 and not train_classes & held_out

    names = open(tmp_path / 'a' / 'classnames.txt').read().split('\n')[:-1]
    assert names == class_names()
    heldout = [json.loads(line) for line in open(tmp_path / 'a' / 'heldout.jsonl')]
    assert len(heldout) == 12
    for record in heldout:
        assert record['classname'] in held_out and names[record['label']] == record['classname']
        assert osp.isfile(tmp_path / 'a' / 'heldout' / record['filepath'])


def test_demo_config_builds_a_training_batch_and_heldout_set(tmp_path):
    cfg = Config.fromfile(osp.join(CONFIGS, 'demo_shapes.py'))
    init_default_scope('mmpretrain')  # as the Runner does for our configs
    root = str(tmp_path / 'demo')
    loader_cfg = cfg.train_dataloader
    loader_cfg.update(batch_size=4, num_workers=0, persistent_workers=False)
    loader_cfg.dataset.update(data_root=root, batch_size=4, samples_per_epoch=80,
                              generate_cfg=SMALL)
    loader = Runner.build_dataloader(loader_cfg)
    batch = next(iter(loader))
    assert batch['inputs']['images'].shape == (4, 3, 64, 64)  # the config's crop size
    assert batch['inputs']['images'].dtype == torch.uint8
    assert batch['inputs']['texts'].shape == (4, 77)
    assert len(loader) == 20

    heldout_cfg = cfg.heldout_dataset
    heldout_cfg.update(ann_file=osp.join(root, 'heldout.jsonl'),
                       data_prefix=dict(img_path=osp.join(root, 'heldout')))
    heldout = DATASETS.build(heldout_cfg)
    sample = heldout[0]
    assert len(heldout) == 12 and sample['data_samples'].gt_label.shape == (1, )
    assert sample['inputs']['images'].shape == (3, 64, 64)


def test_laion_config_pipeline_and_dataset_build(tmp_path):
    cfg = Config.fromfile(osp.join(CONFIGS, 'laion_wds.py'))
    crop = [t for t in cfg.train_pipeline if t.type == 'RandomResizedCrop'][0]
    assert crop.scale == 224 and tuple(crop.crop_ratio_range) == (0.5, 1.0)
    for transform in cfg.train_pipeline:
        TRANSFORMS.build(transform)
    write_good_shards(tmp_path, num_samples=6, per_shard=3)
    dataset_cfg = cfg.train_dataloader.dataset
    dataset_cfg.shards = str(tmp_path / '{00000..00001}.tar')
    dataset = DATASETS.build(dataset_cfg)
    assert len(dataset) == math.ceil(20_000_000 / 128) * 128  # whole batches per rank
    item = next(iter(dataset))
    assert item['inputs']['images'].shape == (3, 224, 224)


def test_demo_data_with_other_settings_is_refused(tmp_path):
    root = str(tmp_path / 'demo')
    generate_demo_shapes(root, **SMALL)
    assert generate_demo_shapes(root, **SMALL)['num_train'] == 80  # same settings: kept
    fewer = dict(SMALL, num_train=40)
    with pytest.raises(ValueError, match=re.escape(root) + ' .*num_train=80 instead of 40.*del'):
        generate_demo_shapes(root, **fewer)
    with pytest.raises(ValueError, match=re.escape(root) + ' .*image_size=32 instead of 64'):
        DemoShapesShardDataset(root, generate_cfg=dict(SMALL, image_size=64))
    assert len(list((tmp_path / 'demo' / 'train').glob('*.tar'))) == 3  # nothing rewritten


def test_demo_dataset_reads_only_the_listed_shards(tmp_path):
    root = tmp_path / 'demo'
    generate_demo_shapes(str(root), **SMALL)
    shutil.copy(root / 'train' / '00000.tar', root / 'train' / '00007.tar')  # a stray shard
    dataset = DemoShapesShardDataset(str(root), generate_cfg=SMALL, shuffle=False)
    assert [osp.basename(path) for path in dataset.shards] == [
        '00000.tar', '00001.tar', '00002.tar']
    assert len(dataset) == 80


def test_interrupted_demo_generation_never_looks_complete(tmp_path, monkeypatch):
    root = tmp_path / 'demo'

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(demo_shapes, '_write_eval_split', interrupted)
    with pytest.raises(KeyboardInterrupt):
        generate_demo_shapes(str(root), **SMALL)
    assert not root.exists() and os.listdir(tmp_path) == []  # nothing half-written is left
    # A folder without meta.json (e.g. from an older, interrupted run) is named, not used.
    (root / 'train').mkdir(parents=True)
    shutil.copy(write_good_shards(tmp_path / 'other', 4, 4)[0], root / 'train' / '00000.tar')
    with pytest.raises(FileNotFoundError, match=re.escape(str(root)) + ' holds no meta.json'):
        DemoShapesShardDataset(str(root), generate_cfg=SMALL)
