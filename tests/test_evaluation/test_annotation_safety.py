"""Annotation files are data: reading one never runs code.

A crafted ``.pkl`` (whose unpickling would create a marker file) and a crafted ``.yaml`` (whose
``!!python/object/apply:os.system`` tag would) are given to every reader of annotation files:
``tools/test.py`` with a retrieval config in its own process, and in this process
``mmengine.load`` and mmengine's ``BaseDataset`` (the path of the mmpretrain, mmdet and mmseg
datasets). Each must refuse in one line naming the file, and no marker may appear; JSON,
plain YAML, pickle dumps and YAML configs keep working.
"""
import json
import os
import os.path as osp
import pickle
import subprocess
import sys

import mmengine
import pytest
from mmengine.config import Config

import rils_mm  # noqa: F401  (applies the fixes)
from rils_mm.compat import DataFileError, UnsafeDataFileError
from rils_mm.compat.data_files import install_data_file_handlers

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
RETRIEVAL = 'configs/rils/demo_cpu_retrieval.py'


class Payload:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f'touch {self.marker}', )


def write_crafted(folder, name):
    """``folder/name`` (.pkl or .yaml) that would create ``folder/<name>.ran`` when read;
    returns (file, marker)."""
    path, marker = osp.join(folder, name), osp.join(folder, f'{name}.ran')
    if name.endswith('.pkl'):
        with open(path, 'wb') as file:
            pickle.dump(dict(images=[], payload=Payload(marker)), file)
    else:
        with open(path, 'w') as file:
            file.write(f'images: []\npayload: !!python/object/apply:os.system ["touch {marker}"]\n')
    return path, marker


def test_test_tool_refuses_crafted_annotation_files(tmp_path):
    """tools/test.py with the demo retrieval config pointed at each crafted file, in its own
    process (the two run at once: each spends its time importing)."""
    crafted = [write_crafted(str(tmp_path), name) for name in ('ann.pkl', 'ann.yaml')]
    env = dict(os.environ, PYTHONPATH=REPO)
    processes = [
        subprocess.Popen([
            sys.executable, 'tools/test.py', RETRIEVAL, '--work-dir', str(tmp_path / 'work'),
            '--cfg-options', f'test_dataloader.dataset.data_root={tmp_path}',
            f'test_dataloader.dataset.ann_file={path}'
        ], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for path, _ in crafted
    ]
    for process, (path, marker) in zip(processes, crafted):
        _, stderr = process.communicate(timeout=300)
        assert not osp.exists(marker), f'reading {path} ran its code'
        assert process.returncode != 0 and 'Traceback' not in stderr, stderr[-3000:]
        lines = [line for line in stderr.splitlines() if line.startswith('tools/test.py:')]
        assert len(lines) == 1 and path in lines[0], stderr[-3000:]
        reason = ('a pickle file can run code when read; convert it to JSON'
                  if path.endswith('.pkl') else "tag 'tag:yaml.org,2002:python/object/apply")
        assert reason in lines[0], lines[0]


@pytest.mark.parametrize('name', ['ann.pkl', 'ann.yaml'])
def test_mmengine_load_and_base_dataset_refuse_crafted_files(tmp_path, name):
    from mmengine.dataset import BaseDataset
    path, marker = write_crafted(str(tmp_path), name)
    file_format = name.rsplit('.', 1)[1]
    for read in (lambda: mmengine.load(path),
                 lambda: mmengine.load(open(path, 'rb' if file_format == 'pkl' else 'r'),
                                       file_format=file_format),
                 lambda: BaseDataset(ann_file=path, lazy_init=False)):
        with pytest.raises(UnsafeDataFileError) as error:
            read()
        assert path in str(error.value) and '\n' not in str(error.value)
        assert not osp.exists(marker)


def test_data_files_that_stay_readable(tmp_path, karpathy_split):
    """JSON and plain YAML annotations load; pickle and YAML dumps still write (tools/test.py
    --out metrics.pkl); a YAML config (the user's own code, like a .py config) reads back with
    its tuples."""
    from mmpretrain.registry import DATASETS
    dataset = DATASETS.build(dict(type='KarpathyRetrieval', data_root=karpathy_split['root'],
                                  data_prefix='images', ann_file=karpathy_split['ann_file'],
                                  test_mode=True))
    assert len(dataset) == 3
    plain = tmp_path / 'plain.yaml'
    mmengine.dump(dict(images=[dict(split='test', sentences=['a'])], n=1.5), str(plain))
    assert mmengine.load(str(plain)) == dict(images=[dict(split='test', sentences=['a'])], n=1.5)
    mmengine.dump(dict(top1=12.5), str(tmp_path / 'metrics.pkl'))
    with open(tmp_path / 'metrics.pkl', 'rb') as file:
        assert pickle.load(file) == dict(top1=12.5)
    config = tmp_path / 'config.yaml'
    Config(dict(size=(32, 32), model=dict(type='X'))).dump(str(config))
    assert '!!python/tuple' in config.read_text()
    assert Config.fromfile(str(config)).size == (32, 32)
    base = tmp_path / 'child.yml'
    base.write_text(f'_base_: {json.dumps(str(config))}\nmodel:\n  depth: 2\n')
    child = Config.fromfile(str(base))
    assert child.size == (32, 32) and child.model == dict(type='X', depth=2)
    # Installing again (rils_mm imported twice) changes nothing.
    from mmengine.config.config import load as config_load
    from mmengine.fileio.handlers import file_handlers
    handlers = dict(file_handlers)
    install_data_file_handlers()
    assert file_handlers == handlers
    assert mmengine.config.config.load is config_load
    assert Config.fromfile(str(base)).to_dict() == child.to_dict()


def test_yaml_syntax_errors_are_one_line(tmp_path):
    path = tmp_path / 'broken.yml'
    path.write_text('images: [\n  a, b\n')
    with pytest.raises(DataFileError, match=f'{path}: ') as error:
        mmengine.load(str(path))
    assert '\n' not in str(error.value)

