"""The environment tools/setup_env.sh builds: the pinned stack imports and mmcv's ops run."""
import importlib

import pytest
import torch
import torchvision


@pytest.mark.parametrize('name', ['rils_mm', 'mmengine', 'mmcv', 'mmpretrain', 'mmdet', 'mmseg',
                                  'open_clip'])
def test_stack_imports(name):
    assert importlib.import_module(name).__version__


def test_pinned_versions():
    import mmcv
    import mmdet
    import mmengine
    import mmpretrain
    import mmseg
    assert (mmengine.__version__, mmcv.__version__, mmpretrain.__version__, mmdet.__version__,
            mmseg.__version__) == ('0.10.7', '2.1.0', '1.2.0', '3.3.0', '1.2.2')


def test_mmcv_nms_runs_on_cpu_and_matches_torchvision():
    from mmcv.ops import nms
    generator = torch.Generator().manual_seed(0)
    xy = torch.rand(50, 2, generator=generator) * 100
    boxes = torch.cat([xy, xy + 10 + torch.rand(50, 2, generator=generator) * 30], dim=1)
    scores = torch.rand(50, generator=generator)
    dets, keep = nms(boxes, scores, iou_threshold=0.3)
    expected = torchvision.ops.nms(boxes, scores, 0.3)
    assert keep.tolist() == expected.tolist()
    torch.testing.assert_close(dets[:, 4], scores[expected])


def test_mmcv_roi_align_runs_on_cpu_and_matches_torchvision():
    from mmcv.ops import RoIAlign
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(2, 3, 16, 16, generator=generator)
    rois = torch.tensor([[0, 1.0, 1.0, 9.0, 12.0], [1, 4.0, 2.5, 15.0, 7.0]])
    ours = RoIAlign(output_size=(4, 4), spatial_scale=0.5, sampling_ratio=2, aligned=True)
    expected = torchvision.ops.roi_align(features, rois, output_size=(4, 4), spatial_scale=0.5,
                                         sampling_ratio=2, aligned=True)
    torch.testing.assert_close(ours(features, rois), expected)
