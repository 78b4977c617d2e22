"""Each compatibility fix in rils_mm.compat, exercised through the code path that needs it."""
import json
import os
import os.path as osp
import pickle
import socket
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp
from mmengine.model import BaseModel

import rils_mm  # noqa: F401  (applies the fixes correctness needs)
from rils_mm.compat import UnsafeCheckpointError, install_tool_conveniences

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


# --- what importing rils_mm changes --------------------------------------------------------------
# Run in a fresh interpreter: mmengine as it comes, then ``import rils_mm``, then the tools' call.
IMPORT_EFFECTS = r"""
import json

import numpy as np
import torch
import mmengine.config.config as config_module
import mmengine.dist.utils as dist_utils
from mmengine.fileio.backends import LocalBackend
from mmengine.fileio.handlers.registry_utils import file_handlers
from mmengine.hooks import CheckpointHook
from mmengine.model import BaseModule
from mmengine.model.wrappers import MMDistributedDataParallel, MMFullyShardedDataParallel
from mmengine.optim import DefaultOptimWrapperConstructor
from mmengine.runner import EpochBasedTrainLoop
from mmengine.runner.checkpoint import CheckpointLoader

# What a program of one's own would see changed: the tools' console and speed fixes ...
CONVENIENCES = {
    'BaseModule._dump_init_info': lambda: BaseModule._dump_init_info,
    'DefaultOptimWrapperConstructor.__call__': lambda: DefaultOptimWrapperConstructor.__call__,
    'mmengine.config.config.FormatCode': lambda: config_module.FormatCode,
}
# ... and the fixes correct results and safe loading need.
REQUIRED = {
    'CheckpointLoader local scheme': lambda: CheckpointLoader._schemes[''],
    'CheckpointLoader https:// scheme': lambda: CheckpointLoader._schemes['https://'],
    'LocalBackend.put': lambda: LocalBackend.put,
    'CheckpointHook._save_checkpoint_with_step':
    lambda: CheckpointHook._save_checkpoint_with_step,
    'EpochBasedTrainLoop.run_epoch': lambda: EpochBasedTrainLoop.run_epoch,
    'pkl handler': lambda: type(file_handlers['pkl']),
    'yaml handler': lambda: type(file_handlers['yaml']),
    'dist_utils._init_dist_pytorch': lambda: dist_utils._init_dist_pytorch,
    'MMDistributedDataParallel.__init__': lambda: MMDistributedDataParallel.__init__,
    'MMFullyShardedDataParallel.__init__': lambda: MMFullyShardedDataParallel.__init__,
}


def snapshot(getters):
    return {name: get() for name, get in getters.items()}


def changed(before, getters):
    return sorted(name for name, get in getters.items() if get() is not before[name])


mmengine_conveniences, mmengine_required = snapshot(CONVENIENCES), snapshot(REQUIRED)
import rils_mm  # noqa: E402
import rils_mm.tools.cli  # noqa: E402  (the tools' library alone applies nothing more)
from rils_mm.compat import install_tool_conveniences  # noqa: E402

result = dict(
    conveniences_on_import=changed(mmengine_conveniences, CONVENIENCES),
    required_on_import=changed(mmengine_required, REQUIRED),
    in1d='in1d' in np.__dict__ and 'float' in np.__dict__)
install_tool_conveniences()
result['conveniences_in_tools'] = changed(mmengine_conveniences, CONVENIENCES)
installed = snapshot(CONVENIENCES)
install_tool_conveniences()  # twice: nothing wrapped twice
result['changed_by_second_call'] = changed(installed, CONVENIENCES)
print(json.dumps(result))
"""


def test_import_applies_the_required_fixes_and_leaves_the_tools_conveniences_out():
    """``import rils_mm`` in someone else's program changes only what correctness, safe
    loading and the pinned releases need; the console and config-text fixes come with our
    tools (``install_tool_conveniences``, once however often it is called)."""
    result = subprocess.run([sys.executable, '-c', IMPORT_EFFECTS], cwd=REPO, env=os.environ,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    effects = json.loads(result.stdout.strip().splitlines()[-1])
    assert effects['conveniences_on_import'] == []
    assert effects['required_on_import'] == sorted([
        'CheckpointLoader local scheme', 'CheckpointLoader https:// scheme', 'LocalBackend.put',
        'CheckpointHook._save_checkpoint_with_step', 'EpochBasedTrainLoop.run_epoch',
        'pkl handler', 'yaml handler', 'dist_utils._init_dist_pytorch',
        'MMDistributedDataParallel.__init__', 'MMFullyShardedDataParallel.__init__'])
    assert effects['in1d']
    assert effects['conveniences_in_tools'] == sorted([
        'BaseModule._dump_init_info', 'DefaultOptimWrapperConstructor.__call__',
        'mmengine.config.config.FormatCode'])
    assert effects['changed_by_second_call'] == []


# --- numpy 2 aliases -----------------------------------------------------------------------------
def test_mmpretrain_retrieval_metric_runs_on_numpy_2():
    """mmpretrain's RetrievalAveragePrecision calls np.in1d (removed in numpy 2.4)."""
    from mmpretrain.evaluation.metrics import RetrievalAveragePrecision
    # Ranking [2, 0, 1, 3]; relevant items 0 and 3: AP = (1/2 + 2/4) / 2 = 0.5.
    pred = torch.tensor([[0.8, 0.3, 0.9, 0.1]])
    target = torch.tensor([[1, 0, 0, 1]])
    ap = RetrievalAveragePrecision.calculate(pred, target, topk=4)
    assert ap.item() == pytest.approx(50.0)


def test_lvis_eval_runs_on_numpy_2(tmp_path):
    """lvis 0.5.3's LVISEval.accumulate casts with np.float (removed in numpy 2)."""
    from lvis import LVIS, LVISEval, LVISResults
    gt = dict(
        info={}, licenses=[],
        images=[dict(id=1, width=100, height=100, neg_category_ids=[],
                     not_exhaustive_category_ids=[], coco_url='', flickr_url='')],
        categories=[dict(id=1, name='box', frequency='f', image_count=1, synset='box.n.01',
                         synonyms=['box'], def_='', instance_count=1)],
        annotations=[dict(id=1, image_id=1, category_id=1, bbox=[10, 10, 50, 40], area=2000,
                          segmentation=[[10, 10, 60, 10, 60, 50, 10, 50]])])
    gt_file = tmp_path / 'lvis_gt.json'
    gt_file.write_text(json.dumps(gt))
    results = [dict(image_id=1, category_id=1, bbox=[10, 10, 50, 40], score=0.9)]
    lvis_gt = LVIS(str(gt_file))
    evaluator = LVISEval(lvis_gt, LVISResults(lvis_gt, results), iou_type='bbox')
    evaluator.run()
    assert evaluator.results['AP'] == pytest.approx(1.0)


# --- weights-only checkpoint loading -------------------------------------------------------------
class ToyModel(BaseModel):

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(2, 1)

    def forward(self, inputs, data_samples=None, mode='tensor'):
        inputs = torch.stack(inputs) if isinstance(inputs, list) else inputs
        out = self.linear(inputs)
        if mode == 'loss':
            return dict(loss=out.pow(2).mean())
        return out


def make_runner(work_dir, max_iters, resume=False):
    from mmengine.runner import Runner
    dataset = [dict(inputs=torch.randn(2)) for _ in range(8)]
    return Runner(
        model=ToyModel(),
        work_dir=str(work_dir),
        train_dataloader=dict(dataset=dataset, sampler=dict(type='DefaultSampler', shuffle=True),
                              batch_size=2, collate_fn=dict(type='default_collate')),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.1)),
        train_cfg=dict(by_epoch=False, max_iters=max_iters),
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=2, by_epoch=False)),
        resume=resume,
        default_scope='mmengine')


def test_runner_resume_keeps_weights_only_loading(tmp_path):
    runner = make_runner(tmp_path, max_iters=2)
    runner.train()
    ckpt = tmp_path / 'iter_2.pth'
    assert ckpt.is_file()
    trained = {k: v.clone() for k, v in runner.model.state_dict().items()}

    resumed = make_runner(tmp_path, max_iters=2, resume=True)
    resumed.load_or_resume()  # fails with "Unsupported global: ...HistoryBuffer" without the fix
    assert resumed.iter == 2
    for key, value in resumed.model.state_dict().items():
        torch.testing.assert_close(value, trained[key])
    # The message hub's history (numpy-backed HistoryBuffer) came back too.
    assert resumed.message_hub.get_scalar('train/loss').current() == pytest.approx(
        runner.message_hub.get_scalar('train/loss').current())


class NotAllowed:
    """An arbitrary class: unpickling it could run code, so it must be refused."""


def test_checkpoint_with_other_objects_is_refused(tmp_path):
    from mmengine.runner import load_checkpoint
    path = tmp_path / 'evil.pth'
    torch.save(dict(state_dict=dict(w=torch.zeros(1)), payload=NotAllowed()), path)
    with pytest.raises(UnsafeCheckpointError) as info:
        load_checkpoint(torch.nn.Linear(1, 1), str(path))
    message = str(info.value)
    assert str(path) in message and 'NotAllowed' in message
    assert isinstance(info.value, pickle.UnpicklingError)


# --- CPU distributed -----------------------------------------------------------------------------
def _init_and_wrap(rank, world_size, port, out_dir):
    torch.set_num_threads(1)  # forked: keep off the parent's OpenMP pool
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    from mmengine.dist import get_world_size, init_dist
    from mmengine.model.wrappers import MMDistributedDataParallel
    init_dist('pytorch', backend='nccl')  # the configs' default; gloo is used without CUDA
    torch.manual_seed(rank)  # different weights per rank: DDP must broadcast rank 0's
    model = MMDistributedDataParallel(module=ToyModel(), device_ids=[rank])
    weight = model.module.linear.weight.detach().clone()
    torch.save(dict(world_size=get_world_size(), weight=weight), f'{out_dir}/{rank}.pt')
    torch.distributed.destroy_process_group()


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the CPU-only path')
def test_mmengine_launcher_and_ddp_wrapper_work_on_cpu(tmp_path):
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        port = sock.getsockname()[1]
    # Forked (the test module is not importable from a spawned child); the process group is
    # created by mmengine's launcher here, not by the run_distributed fixture.
    mp.start_processes(_init_and_wrap, args=(2, port, str(tmp_path)), nprocs=2, join=True,
                       start_method='fork')
    results = [torch.load(tmp_path / f'{rank}.pt') for rank in range(2)]
    assert [r['world_size'] for r in results] == [2, 2]
    torch.testing.assert_close(results[0]['weight'], results[1]['weight'])


def test_config_text_skips_yapf_on_a_line_it_cannot_fit_and_formats_once():
    """A long path: the text is mmengine's own (yapf would reformat it, slowly) and reads
    back to the same config; short lines: yapf's text, formatted once for repeated calls."""
    install_tool_conveniences()  # as the tools do (not applied on import)
    import mmengine.config.config as config_module
    from mmengine.config import Config
    from yapf.yapflib.yapf_api import FormatCode
    long_path = '/data/' + 'very_long_folder_name/' * 5 + '{00000..00099}.tar'
    cfg = Config(dict(train_dataloader=dict(batch_size=2, dataset=dict(shards=long_path))))
    text = cfg.pretty_text
    assert long_path in text
    assert Config.fromstring(text, '.py')._cfg_dict.to_dict() == cfg._cfg_dict.to_dict()
    raw = Config(cfg._cfg_dict.to_dict(), format_python_code=False).pretty_text
    assert text == raw  # unpolished: yapf did not run
    assert FormatCode(raw, style_config='pep8')[0] != raw  # which it would have changed

    short = Config(dict(model=dict(type='RILS', embed_dims=512), lr=1e-3))
    hits = config_module.FormatCode.cache_info().hits
    first, second = short.pretty_text, short.pretty_text
    assert first == second and 'embed_dims=512' in first
    assert config_module.FormatCode.cache_info().hits == hits + 1
