import os.path as osp
import sys

# The test modules here share helpers (tiny RILS builders, written-out losses).
sys.path.insert(0, osp.dirname(osp.abspath(__file__)))

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(scope='module')
def clip_checkpoint(tmp_path_factory):
    """A tiny image-text model of this package and its checkpoint file (a CLIP teacher)."""
    from test_clip_teacher import TINY_CLIP
    from test_rils_algorithm import build
    model = build(TINY_CLIP)
    path = str(tmp_path_factory.mktemp('teacher') / 'clip.pth')
    torch.save(dict(state_dict=model.state_dict()), path)
    return model, path
