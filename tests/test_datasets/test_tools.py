"""make_shards and inspect_shards, through their command-line entry points."""
import importlib.util
import json
import os
import os.path as osp
import subprocess
import sys

import numpy as np

from rils_mm.datasets import ImageTextShardDataset, ShardWriter, scan_shard

from shard_helpers import encode, good_jpeg
from tool_processes import run_python  # noqa: E402

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TOOLS = osp.join(REPO, 'tools', 'dataset_converters')


def load_tool(name):
    spec = importlib.util.spec_from_file_location(name, osp.join(TOOLS, f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_make_shards_from_folder_and_tsv(tmp_path, capsys):
    images = tmp_path / 'images'
    images.mkdir()
    rows = ['filepath\ttitle']
    for index in range(7):
        ext = 'png' if index % 2 else 'jpg'
        data = encode(np.full((12, 12, 3), index, np.uint8), 'PNG' if ext == 'png' else 'JPEG')
        (images / f'{index}.{ext}').write_bytes(data)
        rows.append(f'{index}.{ext}\tcaption {index}')
    (tmp_path / 'captions.tsv').write_text('\n'.join(rows) + '\n')
    load_tool('make_shards').main([str(images), str(tmp_path / 'captions.tsv'),
                                   str(tmp_path / 'out'), '--samples-per-shard', '3'])
    assert 'wrote 3 shard(s)' in capsys.readouterr().out
    refs, error = scan_shard(str(tmp_path / 'out' / '00000.tar'))
    assert error is None and [sorted(r.members) for r in refs] == [
        ['jpg', 'json', 'txt'], ['json', 'png', 'txt'], ['jpg', 'json', 'txt']]
    dataset = ImageTextShardDataset(str(tmp_path / 'out'), shuffle=False)
    assert len(dataset) == 7  # from sizes.json
    first = next(iter(dataset))
    assert first['text'] == 'caption 0' and first['img_bytes'] == (images / '0.jpg').read_bytes()


def test_make_shards_missing_image_is_one_line_and_leaves_no_dataset(tmp_path):
    for index in range(3):
        (tmp_path / f'{index}.jpg').write_bytes(good_jpeg(index))
    # Line 5 names a missing image, after a full shard of 2 samples has been written.
    (tmp_path / 'captions.tsv').write_text(
        'filepath\ttitle\n0.jpg\ta\n1.jpg\tb\n2.jpg\tc\nnope.jpg\td\n')
    out = tmp_path / 'out'
    result = run_python(
        [sys.executable, 'tools/dataset_converters/make_shards.py', str(tmp_path),
         str(tmp_path / 'captions.tsv'), str(out), '--samples-per-shard', '2'],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and 'Traceback' not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines() == [
        f'make_shards.py: error: {tmp_path}/captions.tsv:5: image {tmp_path}/nope.jpg does not '
        f'exist (image paths are relative to {tmp_path})']
    assert os.listdir(out) == []  # no shard, no sizes.json, no partial file



def test_make_shards_reports_the_rows_it_skips(tmp_path):
    """Rows with an empty or non-UTF-8 caption, or no image path, are skipped and reported by
    reason and line, on the console and in make_shards_report.json beside the shards; a table
    with no usable row writes nothing and fails. (Two runs of the tool, at once.)"""
    for index in range(3):
        (tmp_path / f'{index}.jpg').write_bytes(good_jpeg(index))
    table = tmp_path / 'captions.tsv'
    table.write_bytes(b'filepath\ttitle\n0.jpg\ta\n1.jpg\t  \n2.jpg\tb\xff\xfe\n\tno image\n'
                      b'2.jpg\tc\n1.jpg\t\n')
    hopeless = tmp_path / 'hopeless.tsv'
    hopeless.write_bytes(b'filepath\ttitle\n0.jpg\t\n1.jpg\t\xff\n')
    commands = [(table, tmp_path / 'out'), (hopeless, tmp_path / 'none')]
    processes = [subprocess.Popen(
        [sys.executable, 'tools/dataset_converters/make_shards.py', str(tmp_path), str(captions),
         str(out), '--samples-per-shard', '1'], cwd=REPO, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True) for captions, out in commands]
    (good, good_err), (bad, bad_err) = [process.communicate(timeout=120) for process in processes]

    out = tmp_path / 'out'
    assert processes[0].returncode == 0, good_err
    assert good_err.strip().splitlines() == [
        f'make_shards.py: warning: skipped 4 of 6 rows of {table}: caption_not_utf8 1 (line 4), '
        f'empty_caption 2 (lines 3, 7), missing_image 1 (line 5); see '
        f'{out}/make_shards_report.json']
    assert good.strip().splitlines()[-1] == f'wrote 2 shard(s) (2 samples) to {out}'
    report = json.loads((out / 'make_shards_report.json').read_text())
    assert report == dict(
        captions=str(table), rows=6, written=2, shards=2,
        skipped=dict(caption_not_utf8=1, empty_caption=2, missing_image=1),
        skipped_rows=dict(caption_not_utf8=[f'{table}:4'],
                          empty_caption=[f'{table}:3', f'{table}:7'],
                          missing_image=[f'{table}:5']))
    assert len(ImageTextShardDataset(str(out), shuffle=False)) == 2

    assert processes[1].returncode == 1 and 'Traceback' not in bad_err, bad_err
    assert bad_err.strip().splitlines() == [
        f'make_shards.py: error: none of the 2 rows of {hopeless} can be written: '
        f'caption_not_utf8 1 (line 3), empty_caption 1 (line 2)']
    assert not (tmp_path / 'none').exists()


def test_inspect_shards_lists_bad_samples(tmp_path, capsys):
    with ShardWriter(str(tmp_path), 4) as writer:
        for index in range(6):
            writer.write(f'{index:03d}', dict(jpg=good_jpeg(index), txt=f'c {index}'))
        writer.write('bad1', dict(jpg=b'garbage', txt='c'))
        writer.write('bad2', dict(jpg=good_jpeg(1), txt=''))
        writer.write('gray', dict(jpg=encode(np.zeros((9, 9, 3), np.uint8), 'JPEG', 'L'),
                                  txt='g'))
    report = load_tool('inspect_shards').main([str(tmp_path / '{00000..00002}.tar')])
    out = capsys.readouterr().out
    assert report['num_samples'] == 9 and report['num_good'] == 7
    assert dict(report['reasons']) == {'undecodable_image': 1, 'empty_caption': 1}
    assert dict(report['converted']) == {'L': 1}
    assert '9 samples, 7 good, 2 bad' in out and 'bad1\tundecodable_image' in out


def test_inspect_shards_names_a_missing_shard_in_one_line(tmp_path):
    with ShardWriter(str(tmp_path), 4) as writer:
        for index in range(6):  # 00000.tar and 00001.tar; 00002.tar does not exist
            writer.write(f'{index:03d}', dict(jpg=good_jpeg(index), txt=f'c {index}'))
    pattern = str(tmp_path / '{00000..00002}.tar')
    result = run_python([sys.executable, osp.join(TOOLS, 'inspect_shards.py'), pattern],
                        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert 'Traceback' not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"tools/dataset_converters/inspect_shards.py: error: 1 of 3 shard(s) from pattern "
        f"'{pattern}' do not exist: {tmp_path}/00002.tar"]
