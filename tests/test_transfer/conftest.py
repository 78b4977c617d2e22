"""Fixtures for the transfer tests; makes ``transfer_helpers`` importable (importlib mode)."""
import os.path as osp
import sys

import pytest
import torch

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from transfer_helpers import build_pretrainer  # noqa: E402


@pytest.fixture(scope='session')
def pretrain_checkpoint(tmp_path_factory):
    """A tiny RILS pretraining checkpoint, ``dict(state_dict=...)``, and its model."""
    model = build_pretrainer()
    path = str(tmp_path_factory.mktemp('pretrain') / 'rils_tiny.pth')
    torch.save(dict(state_dict=model.state_dict(), meta=dict(epoch=1)), path)
    return path, model
