"""CSV/TSV, JSONL and COCO caption datasets: columns, caption sampling, errors, bad images."""
import json
import re

import mmengine.dataset.sampler as sampler_module
import numpy as np
import pytest
from mmengine.dataset import DefaultSampler

from rils_mm.datasets import CocoCaptionDataset, CsvImageTextDataset, JsonlImageTextDataset

from shard_helpers import encode, tiny_pipeline

PIPELINE = tiny_pipeline(tokenize=True)


@pytest.fixture
def image_dir(tmp_path):
    folder = tmp_path / 'images'
    folder.mkdir()
    for index in range(6):
        array = np.full((20, 20, 3), index * 40, np.uint8)
        (folder / f'{index}.png').write_bytes(encode(array, 'PNG'))
    (folder / 'broken.png').write_bytes(b'not a png')
    return folder


def write_tsv(path, rows, header=('filepath', 'title', 'source')):
    lines = ['\t'.join(header)] + ['\t'.join(row) for row in rows]
    path.write_bytes('\n'.join(lines).encode('utf-8') + b'\n')


def test_csv_reads_named_columns_and_drops_bad_captions(tmp_path, image_dir):
    ann = tmp_path / 'train.tsv'
    write_tsv(ann, [(f'{i}.png', f'picture number {i}', 'web') for i in range(4)] +
              [('4.png', '   ', 'web')])
    with open(ann, 'ab') as file:
        file.write(b'5.png\tcaf\xe9 latin-1\tweb\n')  # not UTF-8
    dataset = CsvImageTextDataset(str(ann), img_key='filepath', caption_key='title', sep='\t',
                                  data_prefix=dict(img_path=str(image_dir)), pipeline=PIPELINE)
    assert len(dataset) == 4
    assert dict(dataset.dropped) == {'empty_caption': 1, 'caption_not_utf8': 1}
    sample = dataset[2]
    assert sample['data_samples'].caption == 'picture number 2'
    assert sample['inputs']['images'].shape == (3, 16, 16)
    assert int(sample['inputs']['images'].float().mean()) == 80  # image 2.png was read
    assert sample['inputs']['texts'].shape == (77, )


def test_csv_missing_column_names_column_and_file(tmp_path):
    ann = tmp_path / 'train.tsv'
    write_tsv(ann, [('0.png', 'x', 'web')])
    with pytest.raises(KeyError, match=r"'caption'.*train\.tsv|train\.tsv.*'caption'"):
        CsvImageTextDataset(str(ann), caption_key='caption')
    with pytest.raises(KeyError, match='filepath'):  # wrong separator: one merged column
        CsvImageTextDataset(str(ann), sep=',')
    with pytest.raises(FileNotFoundError, match='nowhere.tsv'):
        CsvImageTextDataset(str(tmp_path / 'nowhere.tsv'))


def test_jsonl_with_labels_and_errors(tmp_path, image_dir):
    ann = tmp_path / 'heldout.jsonl'
    records = [dict(filepath=f'{i}.png', caption=f'shape {i}', label=i % 2) for i in range(3)]
    ann.write_text(''.join(json.dumps(r) + '\n' for r in records))
    dataset = JsonlImageTextDataset(str(ann), label_key='label', pipeline=PIPELINE,
                                    data_prefix=dict(img_path=str(image_dir)))
    assert [dataset[i]['data_samples'].gt_label.item() for i in range(3)] == [0, 1, 0]
    assert dataset[1]['data_samples'].caption == 'shape 1'

    ann.write_text(json.dumps(records[0]) + '\n{"filepath": oops}\n')
    with pytest.raises(ValueError, match='heldout.jsonl:2'):
        JsonlImageTextDataset(str(ann))
    ann.write_text(json.dumps(dict(image='0.png', caption='c')) + '\n')
    with pytest.raises(KeyError, match="'filepath'.*heldout.jsonl:1|heldout.jsonl:1.*'filepath'"):
        JsonlImageTextDataset(str(ann))


@pytest.fixture
def coco_file(tmp_path):
    coco = dict(images=[dict(id=10 + i, file_name=f'{i}.png') for i in range(5)],
                annotations=[dict(id=j, image_id=10 + i, caption=f'image {i} caption {j}')
                             for i in range(4) for j in range(5)])
    path = tmp_path / 'captions.json'
    path.write_text(json.dumps(coco))
    return path


def test_coco_samples_one_caption_per_visit(coco_file, image_dir):
    dataset = CocoCaptionDataset(str(coco_file), pipeline=PIPELINE, seed=7,
                                 data_prefix=dict(img_path=str(image_dir)))
    assert len(dataset) == 4 and dataset.dropped['image_without_caption'] == 1

    def captions(epoch):
        dataset.set_epoch(epoch)
        return [dataset[i]['data_samples'].caption for i in range(4)]

    first = captions(0)
    assert captions(0) == first  # seeded: same epoch, same choice
    assert all(c.startswith(f'image {i} caption') for i, c in enumerate(first))
    per_epoch = [captions(epoch) for epoch in range(6)]
    assert len({tuple(c) for c in per_epoch}) > 1  # a new draw per visit
    other_seed = CocoCaptionDataset(str(coco_file), pipeline=PIPELINE, seed=8,
                                    data_prefix=dict(img_path=str(image_dir)))
    assert [[other_seed.set_epoch(e), [other_seed[i]['data_samples'].caption
                                       for i in range(4)]][1] for e in range(6)] != per_epoch


def test_coco_annotation_for_unknown_image_is_named(tmp_path):
    path = tmp_path / 'captions.json'
    path.write_text(json.dumps(dict(images=[dict(id=1, file_name='a.png')],
                                    annotations=[dict(image_id=2, caption='c')])))
    with pytest.raises(KeyError, match='image_id 2'):
        CocoCaptionDataset(str(path))
    path.write_text(json.dumps(dict(images=[])))
    with pytest.raises(KeyError, match="'annotations' is missing"):
        CocoCaptionDataset(str(path))


def test_bad_image_is_replaced_and_counted(tmp_path, image_dir):
    ann = tmp_path / 'train.tsv'
    write_tsv(ann, [('0.png', 'zero', 'web'), ('broken.png', 'broken', 'web'),
                    ('2.png', 'two', 'web')])
    dataset = CsvImageTextDataset(str(ann), data_prefix=dict(img_path=str(image_dir)),
                                  pipeline=PIPELINE)
    with pytest.warns(UserWarning, match='broken.png'):
        sample = dataset[1]
    assert sample['data_samples'].skipped_before == {'undecodable_image': 1}
    assert sample['data_samples'].caption in ('zero', 'two')
    assert dataset[1]['data_samples'].key == sample['data_samples'].key  # deterministic
    assert dataset[0]['data_samples'].skipped_before == {}
    strict = CsvImageTextDataset(str(ann), data_prefix=dict(img_path=str(image_dir)),
                                 pipeline=PIPELINE, test_mode=True)
    with pytest.raises(ValueError, match='broken.png'):
        strict[1]


def test_default_sampler_splits_map_style_exactly(monkeypatch, coco_file, image_dir):
    dataset = CocoCaptionDataset(str(coco_file), pipeline=PIPELINE)
    seen = []
    for rank in range(2):
        monkeypatch.setattr(sampler_module, 'get_dist_info', lambda r=rank: (r, 2))
        seen += list(DefaultSampler(dataset, shuffle=True, seed=3, round_up=False))
    assert sorted(seen) == list(range(len(dataset)))


def test_csv_unterminated_quote_names_the_row(tmp_path):
    ann = tmp_path / 'train.tsv'
    # Row 3's opening quote is never closed: csv would read rows 4-5 into its caption.
    ann.write_text('filepath\ttitle\n0.png\tfine\n1.png\t"oops no end\n2.png\tx\n3.png\ty\n')
    with pytest.raises(ValueError, match=r"train\.tsv:3: .*quote.*quoting='none'"):
        CsvImageTextDataset(str(ann))
    # Closed further down: the rows in between would still vanish into one caption.
    ann.write_text('filepath\ttitle\n0.png\t"a\n1.png\tb"\n')
    with pytest.raises(ValueError, match=r'train\.tsv:2: .*line break.*to line 3'):
        CsvImageTextDataset(str(ann))
    ann.write_text('filepath\ttitle\n0.png\t"quoted" then text\n')
    with pytest.raises(ValueError, match=r"train\.tsv:2: .*quoting='none'"):
        CsvImageTextDataset(str(ann))


@pytest.mark.parametrize('row,count', [('1.png\tb\textra', 3), ('1.png', 1)])
def test_csv_row_with_other_field_count_names_the_line(tmp_path, row, count):
    ann = tmp_path / 'train.tsv'
    ann.write_text(f'filepath\ttitle\n\n0.png\ta\n{row}\n')
    with pytest.raises(ValueError, match=rf'train\.tsv:4 has {count} fields, the header has 2'):
        CsvImageTextDataset(str(ann))


def test_csv_quoting_none_keeps_literal_quotes(tmp_path, image_dir):
    ann = tmp_path / 'train.tsv'
    ann.write_text('filepath\ttitle\n0.png\t"quoted" start\n1.png\ta 12" record\n\n\n')
    dataset = CsvImageTextDataset(str(ann), quoting='none', pipeline=PIPELINE,
                                  data_prefix=dict(img_path=str(image_dir)))
    assert [dataset[i]['data_samples'].caption for i in range(2)] == [
        '"quoted" start', 'a 12" record']
    ann.write_text('filepath\ttitle\n0.png\tplain\n\n  \n')  # blank trailing lines are fine
    assert len(CsvImageTextDataset(str(ann))) == 1
    with pytest.raises(ValueError, match="quoting='all'; expected one of"):
        CsvImageTextDataset(str(ann), quoting='all')


def test_jsonl_whose_images_are_all_missing_names_the_folder(tmp_path):
    ann = tmp_path / 'val.jsonl'
    ann.write_text(''.join(json.dumps(dict(filepath=f'{i}.png', caption=f'c {i}')) + '\n'
                           for i in range(3)))
    folder = tmp_path / 'wrong_folder'
    dataset = JsonlImageTextDataset(str(ann), pipeline=PIPELINE, max_refetch=2,
                                    data_prefix=dict(img_path=str(folder)))
    with pytest.warns(UserWarning), pytest.raises(RuntimeError) as error:
        dataset[0]
    message = str(error.value)
    assert f"data_prefix img_path='{folder}'" in message
    assert 'missing_image' in message and re.search(rf'{re.escape(str(folder))}/\d\.png', message)
    strict = JsonlImageTextDataset(str(ann), pipeline=PIPELINE, test_mode=True,
                                   data_prefix=dict(img_path=str(folder)))
    missing = re.escape(f'{folder}/0.png does not exist')
    with pytest.raises(ValueError, match=missing + '.*img_path='):
        strict[0]
