"""Dataset layouts, label mappings, few-shot sampling and bad-input errors, on generated data."""
import json
import os

import numpy as np
import pytest
from mmpretrain.registry import DATASETS

from rils_mm.datasets.resources import (load_class_subset, load_classnames, load_templates,
                                       read_lines)


def _labels(dataset):
    return {os.path.relpath(d['img_path'], dataset.img_prefix): d['gt_label']
            for d in (dataset.get_data_info(i) for i in range(len(dataset)))}


def test_shipped_resources_match_open_clip():
    from open_clip import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES
    assert load_classnames('imagenet_classnames.txt', 1000) == list(IMAGENET_CLASSNAMES)
    templates = load_templates('openai_imagenet_templates.txt')
    assert [t.format('dog') for t in templates] == [f('dog') for f in OPENAI_IMAGENET_TEMPLATES]
    wnids = read_lines('imagenet_wnids.txt')
    assert len(wnids) == 1000 and wnids == sorted(wnids)
    for name in ('imagenet_a_indices.txt', 'imagenet_r_indices.txt'):
        indices = load_class_subset(name)
        assert len(indices) == 200 and indices == sorted(indices)


def test_shipped_subsets_match_timm_copies():
    """The same facts as timm ships them (wnids, A/R index lists)."""
    timm = pytest.importorskip('timm')
    info = os.path.join(os.path.dirname(timm.__file__), 'data', '_info')
    wnids = read_lines('imagenet_wnids.txt')
    assert wnids == read_lines(os.path.join(info, 'imagenet_synsets.txt'))
    for v in 'ar':
        idx = load_class_subset(f'imagenet_{v}_indices.txt')
        assert [wnids[i] for i in idx] == read_lines(
            os.path.join(info, f'imagenet_{v}_synsets.txt'))


def test_bad_text_resources_name_the_file(tmp_path):
    names = tmp_path / 'my_names.txt'
    names.write_text('cat\ndog\n')
    with pytest.raises(ValueError, match='my_names.txt.*2 names but 3'):
        load_classnames(str(names), num_classes=3)
    templates = tmp_path / 'my_templates.txt'
    templates.write_text('a photo of a {}.\na photo without a slot.\n')
    with pytest.raises(ValueError, match='my_templates.txt: template 2'):
        load_templates(str(templates))
    # A lone brace would stop str.format (ours, open_clip's, clip_benchmark's) mid-run.
    for line, problem in (('a { photo of a {}.', "unexpected '{'"),
                          ('a } photo of a {}.', "Single '}'"),
                          ('a {name} photo', r"1 fields \['\{name\}'\]"),
                          ('a {} photo of a {}', '2 fields')):
        templates.write_text(f'a photo of a {{}}.\n{line}\n')
        with pytest.raises(ValueError, match=f'my_templates.txt: template 2 .*{problem}.*'
                           'literal brace'):
            load_templates(str(templates))
    templates.write_text('a {{literal}} photo of a {}.\n')
    assert load_templates(str(templates))[0].format('cat') == 'a {literal} photo of a cat.'


def test_imagenet_folder_subset_labels_follow_the_subset(imagenet_subset_folder):
    root, indices = imagenet_subset_folder
    wnids = read_lines('imagenet_wnids.txt')
    # Subset given in non-sorted order: labels follow it, not the folder order.
    order = [indices[2], indices[0], indices[1]]
    ds = DATASETS.build(dict(type='ImageNetFolder', data_root=root, class_subset=order))
    labels = _labels(ds)
    assert len(labels) == 6
    for k, idx in enumerate(order):
        assert {v for p, v in labels.items() if p.startswith(wnids[idx])} == {k}
    assert ds.metainfo['classes'] == tuple(wnids[i] for i in order)


def test_imagenet_folder_mismatch_names_the_subset_file(imagenet_subset_folder, tmp_path):
    root, _ = imagenet_subset_folder
    subset = tmp_path / 'my_subset.txt'
    subset.write_text('1\n5\n7\n')
    with pytest.raises(ValueError, match='my_subset.txt.*1 missing'):
        DATASETS.build(dict(type='ImageNetFolder', data_root=root, class_subset=str(subset)))
    with pytest.raises(ValueError, match='997 missing'):  # all 1000 classes expected
        DATASETS.build(dict(type='ImageNetFolder', data_root=root))


def test_imagenet_v2_folders_are_label_indices(tmp_path, write_images):
    for name in ('0', '2', '10'):
        write_images(tmp_path / name, ['a.png'], seed=int(name))
    ds = DATASETS.build(dict(type='ImageNetV2', data_root=str(tmp_path), num_classes=11))
    assert _labels(ds) == {'0/a.png': 0, '2/a.png': 2, '10/a.png': 10}
    assert len(ds.metainfo['classes']) == 11


def test_objectnet_mapping_and_subset(tmp_path, write_images):
    root = tmp_path / 'objectnet-1.0'
    maps = root / 'mappings'
    maps.mkdir(parents=True)
    (maps / 'folder_to_objectnet_label.json').write_text(json.dumps(
        {'alarm_clock': 'Alarm clock', 'bench': 'Bench', 'tie': 'Tie'}))
    (maps / 'objectnet_to_imagenet_1k.json').write_text(json.dumps(
        {'Alarm clock': 'analog clock; digital clock', 'Tie': 'Windsor tie'}))
    # Lines are in ImageNet-2012-id order; the json maps pytorch label -> line.
    (maps / 'imagenet_to_label_2012_v2').write_text(
        'digital clock\nWindsor tie\nanalog clock\ntench\n')
    (maps / 'pytorch_to_imagenet_2012_id.json').write_text(json.dumps(
        {'0': 3, '1': 2, '2': 0, '3': 1}))
    for folder in ('alarm_clock', 'bench', 'tie'):
        write_images(root / 'images' / folder, ['x.png'], seed=1)
    ds = DATASETS.build(dict(type='ObjectNet', data_root=str(root)))
    assert ds.class_groups == [[1, 2], [3]]  # analog -> line 2 -> label 1; digital -> 2
    assert _labels(ds) == {'alarm_clock/x.png': 0, 'tie/x.png': 1}  # no 'bench'
    assert ds.metainfo['classes'] == ('Alarm clock', 'Tie')


def test_karpathy_retrieval_items_and_missing_images(karpathy_split, tmp_path, write_images):
    cfg = dict(type='KarpathyRetrieval', data_root=karpathy_split['root'],
               data_prefix='images', ann_file=karpathy_split['ann_file'], split='test',
               test_mode=True)
    ds = DATASETS.build(cfg)
    assert (len(ds), ds.img_size, ds.text_size) == (3, 3, 6)
    item = ds.get_data_info(2)
    assert item['image_id'] == 2 and item['gt_text_id'] == [4, 5]
    assert item['text'] == karpathy_split['captions'][4:6]
    train = DATASETS.build(dict(cfg, split='train', test_mode=False))
    assert len(train) == 1 and train.get_data_info(0)['text'] == 'unused'

    # COCO layout: images under <prefix>/<filepath>/<filename>; one of them missing.
    ann = json.load(open(karpathy_split['ann_file']))
    for img in ann['images']:
        img['filepath'] = 'val2014'
    write_images(tmp_path / 'coco' / 'val2014', ['0.png', '1.png'], seed=0)  # no 2.png
    bad = tmp_path / 'coco' / 'my_dataset_coco.json'
    bad.write_text(json.dumps(ann))
    with pytest.raises(FileNotFoundError, match=r'1 images .*my_dataset_coco.json') as err:
        DATASETS.build(dict(cfg, data_root=str(tmp_path / 'coco'), data_prefix='',
                            ann_file=str(bad)))
    assert os.path.join('val2014', '2.png') in str(err.value)


def test_few_shot_dataset_is_seeded(imagenet_subset_folder):
    root, indices = imagenet_subset_folder
    full = dict(type='ImageNetFolder', data_root=root, class_subset=indices)
    picks = {}
    for seed in range(6):
        ds = DATASETS.build(dict(type='FewShotDataset', dataset=full, shots=1, seed=seed))
        labels = [ds.get_cat_ids(i)[0] for i in range(len(ds))]
        assert sorted(labels) == [0, 1, 2]
        picks[seed] = tuple(ds.get_data_info(i)['img_path'] for i in range(len(ds)))
        again = DATASETS.build(dict(type='FewShotDataset', dataset=full, shots=1, seed=seed))
        assert picks[seed] == tuple(again.get_data_info(i)['img_path'] for i in range(3))
    assert len(set(picks.values())) > 1  # the seed matters
    with pytest.raises(ValueError, match='fewer than 3 shots'):
        DATASETS.build(dict(type='FewShotDataset', dataset=full, shots=3))


def test_crop_border():
    from mmpretrain.registry import TRANSFORMS
    img = np.zeros((10, 12, 3), np.uint8)
    img[0, :] = img[-1, :] = img[:, 0] = img[:, -1] = 255  # a 1-pixel frame
    out = TRANSFORMS.build(dict(type='CropBorder', pixels=2))(dict(img=img))
    assert out['img'].shape == (6, 8, 3) and out['img'].max() == 0


def test_imagenet_folder_with_annotation_file(tmp_path, write_images):
    """mmpretrain's val layout: flat images plus meta/val.txt with ImageNet-1k labels."""
    write_images(tmp_path / 'val', ['a.png', 'b.png'], seed=0)
    (tmp_path / 'meta').mkdir()
    (tmp_path / 'meta' / 'val.txt').write_text('a.png 3\nb.png 999\n')
    ds = DATASETS.build(dict(type='ImageNetFolder', data_root=str(tmp_path), data_prefix='val',
                             ann_file='meta/val.txt'))
    assert _labels(ds) == {'a.png': 3, 'b.png': 999}
    assert len(ds.metainfo['classes']) == 1000
    with pytest.raises(ValueError, match='val.txt: labels \\[999\\]'):
        DATASETS.build(dict(type='ImageNetFolder', data_root=str(tmp_path), data_prefix='val',
                            ann_file='meta/val.txt', class_subset=[1, 2, 3, 4]))
