"""Fixtures for the dataset tests; makes ``shard_helpers`` importable (importlib mode)."""
import os.path as osp
import sys

import pytest

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from shard_helpers import write_good_shards  # noqa: E402


@pytest.fixture
def good_shards(tmp_path):
    """5 shards, 46 samples (the last shard is short)."""
    write_good_shards(tmp_path / 'shards', num_samples=46, per_shard=10)
    return str(tmp_path / 'shards' / '{00000..00004}.tar')
