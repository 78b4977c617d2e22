"""tools/run_chain.py and tools/compare.py as users run them, each step a new process."""
import json
import os
import os.path as osp
import re
import sys

import pytest
from PIL import Image
from tool_processes import run_python  # noqa: E402

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))

# The demo configs on tiny generated data: 2 iterations of 16 pairs per epoch, no workers.
TINY_DATA = ['train_dataloader.batch_size=16', 'train_dataloader.num_workers=0',
             'train_dataloader.persistent_workers=False',
             'train_dataloader.dataset.batch_size=16',
             'train_dataloader.dataset.samples_per_epoch=32',
             'train_dataloader.dataset.shuffle_buffer=32',
             'train_dataloader.dataset.generate_cfg.num_train=64',
             'train_dataloader.dataset.generate_cfg.num_val=16',
             'train_dataloader.dataset.generate_cfg.num_heldout=16',
             'train_cfg.max_epochs=1', 'param_scheduler.1.begin=0',
             'param_scheduler.1.end=1', 'param_scheduler.1.T_max=1']


def run_tool(*args, timeout=600):
    env = dict(os.environ, PYTHONPATH=REPO)
    return run_python([sys.executable, *args], cwd=REPO, env=env, capture_output=True,
                      text=True, timeout=timeout)


def test_chain_hands_each_stage_the_previous_checkpoint(tmp_path):
    work = str(tmp_path / 'chain')
    options = TINY_DATA + [f'train_dataloader.dataset.data_root={tmp_path}/demo']
    first = run_tool('tools/run_chain.py', 'configs/two_stage/mim_to_clip_demo.py',
                     '--work-dir', work, '--cfg-options', *options)
    assert first.returncode == 0, first.stderr[-3000:]
    mim_checkpoint = osp.join(work, 'mim', 'epoch_1.pth')
    assert osp.isfile(mim_checkpoint) and osp.isfile(osp.join(work, 'clip', 'epoch_1.pth'))
    # Stage 2 loaded every encoder tensor of stage 1's checkpoint through the checked loader.
    log = first.stdout + first.stderr
    assert f'model.backbone.init_cfg.checkpoint={mim_checkpoint}' in log
    loaded = re.search(r'Loaded "backbone\.\*" from ' + re.escape(mim_checkpoint) +
                       r': (\d+) matched, 0 missing', log)
    assert loaded and int(loaded.group(1)) > 50, log[-3000:]

    # The MAE stage's encoder goes through the transfer converter like RILS's (one key layout),
    # verified against the mmseg UperNet config's backbone.
    converted = str(tmp_path / 'mae_encoder.pth')
    convert = run_tool('tools/model_converters/rils_to_toolbox.py', mim_checkpoint, converted,
                       '--format', 'mmseg')
    assert convert.returncode == 0, convert.stderr[-3000:]
    import torch
    encoder = torch.load(converted, weights_only=True)
    encoder = encoder.get('state_dict', encoder)
    assert 'backbone.layers.3.attn.q_bias' in encoder and not any(
        k.startswith(('neck.', 'head.')) for k in encoder)

    # A rerun in a new process reuses both finished stages.
    again = run_tool('tools/run_chain.py', 'configs/two_stage/mim_to_clip_demo.py',
                     '--work-dir', work, '--cfg-options', *options)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count('already done') == 2

    # A stage 2 pointed at a missing file fails in one line naming it; a chain naming a
    # missing config is refused before anything runs.
    broken = run_tool('tools/train.py', 'configs/two_stage/clip_from_mim_demo.py', '--work-dir',
                      str(tmp_path / 'alone'), '--cfg-options', *options,
                      f'model.backbone.init_cfg.checkpoint={tmp_path}/nowhere.pth')
    assert broken.returncode == 1
    assert broken.stderr.strip().splitlines()[-1] == (
        f'tools/train.py: error: checkpoint file not found: {tmp_path}/nowhere.pth')
    bad_chain = tmp_path / 'bad_chain.py'
    bad_chain.write_text("stages = [dict(name='a', config='missing.py')]\n")
    refused = run_tool('tools/run_chain.py', str(bad_chain))
    assert refused.returncode == 2 and 'missing.py does not exist' in refused.stderr


def test_chain_reuses_a_stage_only_when_nothing_it_depends_on_changed(tmp_path, monkeypatch):
    """The reuse rule of run_chain, with training replaced by writing a checkpoint (the real
    training runs in the test above): changed overrides retrain the stage and every stage
    after it; a stage with checkpoints but no record resumes; overwrite retrains all."""
    from rils_mm.tools import chain as chain_module
    chain_file = tmp_path / 'chain.py'
    chain_file.write_text(
        f"stages = [dict(name='a', config='{REPO}/configs/mae/demo_cpu.py'),\n"
        f"          dict(name='b', config='{REPO}/configs/two_stage/clip_from_mim_demo.py',\n"
        "               init_key='model.backbone.init_cfg.checkpoint')]\n")
    calls = []

    def fake_train(argv):
        stage_dir = argv[argv.index('--work-dir') + 1]
        calls.append((osp.basename(stage_dir), [a for a in argv if a.startswith('--')],
                      argv[argv.index('--cfg-options') + 1:] if '--cfg-options' in argv
                      else []))
        os.makedirs(stage_dir, exist_ok=True)
        checkpoint = osp.join(stage_dir, f'epoch_{len(calls)}.pth')
        with open(checkpoint, 'wb') as file:
            file.write(b'weights %d' % len(calls))
        with open(osp.join(stage_dir, 'last_checkpoint'), 'w') as file:
            file.write(checkpoint)

    monkeypatch.setattr(chain_module, 'train_main', fake_train)
    work = str(tmp_path / 'work')

    def run(*options, overwrite=False):
        calls.clear()
        chain_module.run_chain(str(chain_file), work, cfg_options=options,
                               overwrite=overwrite)
        return [(name, flags) for name, flags, _ in calls]

    assert run('x=1') == [('a', ['--work-dir', '--overwrite', '--cfg-options']),
                          ('b', ['--work-dir', '--overwrite', '--cfg-options'])]
    first_a = osp.join(work, 'a', 'epoch_1.pth')
    assert calls[1][2] == ['x=1', f'model.backbone.init_cfg.checkpoint={first_a}']
    assert run('x=1') == []  # nothing changed: both reused
    assert [name for name, _ in run('x=2')] == ['a', 'b']  # stage a changed, so b follows
    # Stage b interrupted (its record gone, checkpoints left): only b runs, with --resume.
    os.remove(osp.join(work, 'b', chain_module.STAGE_RECORD))
    assert run('x=2') == [('b', ['--work-dir', '--resume', '--cfg-options'])]
    # Stage a's checkpoint replaced by another file: b no longer follows from what it used.
    checkpoint_a = json.load(open(osp.join(work, 'a', chain_module.STAGE_RECORD)))['checkpoint']
    with open(checkpoint_a, 'wb') as file:
        file.write(b'other weights, another size')
    assert [name for name, _ in run('x=2')] == ['b']
    assert [name for name, _ in run('x=2', overwrite=True)] == ['a', 'b']



def test_chain_never_mixes_settings_after_an_edit_or_an_interruption(tmp_path, monkeypatch,
                                                                     capsys):
    """With training replaced by writing checkpoints (and, on request, dying after the first):
    an edited stage config retrains that stage and the ones after it, saying why; an
    interrupted stage resumes only from what its own attempt saved under the same settings; a
    finished stage survives an attempt that failed before saving, not one that replaced its
    checkpoint."""
    from rils_mm.tools import chain as chain_module
    config_a = tmp_path / 'a.py'
    config_a.write_text(f"_base_ = ['{REPO}/configs/mae/demo_cpu.py']\n")
    chain_file = tmp_path / 'chain.py'
    chain_file.write_text(
        "stages = [dict(name='a', config='./a.py'),\n"
        f"          dict(name='b', config='{REPO}/configs/two_stage/clip_from_mim_demo.py',\n"
        "               init_key='model.backbone.init_cfg.checkpoint')]\n")
    calls, die = [], {}

    def fake_train(argv):
        stage_dir = argv[argv.index('--work-dir') + 1]
        name = osp.basename(stage_dir)
        calls.append((name, [a for a in argv[argv.index('--work-dir') + 2:]
                             if a.startswith('--resume') or a == '--overwrite'
                             or a.endswith('.pth') and '=' not in a]))
        if die.get(name) == 'before saving':
            raise chain_module.UsageError('a bad key')
        os.makedirs(stage_dir, exist_ok=True)
        for epoch in (1, 2):
            checkpoint = osp.join(stage_dir, f'epoch_{epoch}.pth')
            with open(checkpoint, 'wb') as file:
                file.write(b'weights of call %d epoch %d' % (len(calls), epoch))
            with open(osp.join(stage_dir, 'last_checkpoint'), 'w') as file:
                file.write(checkpoint)
            if die.get(name) == f'after epoch {epoch}':
                raise KeyboardInterrupt  # killed

    monkeypatch.setattr(chain_module, 'train_main', fake_train)
    work = str(tmp_path / 'work')

    def run(b_option):
        """The chain with ``b_option`` for stage b; what trained, and the 'why' lines."""
        calls.clear()
        capsys.readouterr()
        try:
            chain_module.run_chain(str(chain_file), work, stage_options=dict(b=[b_option]))
        except (KeyboardInterrupt, chain_module.UsageError):
            pass
        die.clear()
        return calls, [line for line in capsys.readouterr().out.splitlines()
                       if 'under other settings' in line]

    assert [name for name, _ in run('y=1')[0]] == ['a', 'b']
    # The edited config of stage a: a and b train again, and the output says why.
    config_a.write_text(config_a.read_text() + 'optim_wrapper = dict(optimizer=dict(lr=1.0))\n')
    ran, why = run('y=1')
    assert ran == [('a', ['--overwrite']), ('b', ['--overwrite'])]
    assert why == [f'chain: stage "a" was trained under other settings ({config_a} changed): '
                   f'training it from the start',
                   'chain: stage "b" was trained under other settings (stage "a" was trained '
                   'again): training it from the start']
    # Stage b killed after its first checkpoint: the same command resumes from that one.
    die['b'] = 'after epoch 1'
    run('y=2')
    assert run('y=2')[0] == [('b', ['--resume', f'{work}/b/epoch_1.pth'])]
    # Killed again, then rerun with other options: it starts over, not resumed under them.
    die['b'] = 'after epoch 1'
    run('y=3')
    ran, why = run('y=4')
    assert ran == [('b', ['--overwrite'])]
    assert why == ['chain: stage "b" was interrupted under other settings (other --cfg-options): '
                   'training it from the start']
    # An attempt under other options that fails before saving, or saves only another file,
    # leaves the finished stage b reusable; one that replaced its checkpoint does not.
    for end in ('before saving', 'after epoch 1'):
        die['b'] = end
        run('y=5')
        assert run('y=4')[0] == []
    die['b'] = 'after epoch 2'
    run('y=5')
    assert run('y=4')[0] == [('b', ['--overwrite'])]


# A toy model and data for chains that train in a second: what is tested is the chain.
TOY_STAGE_MODULE = """
import torch
from mmengine.model import BaseModel
from mmengine.registry import DATASETS, MODELS


@MODELS.register_module()
class ToyStageModel(BaseModel):
    def __init__(self, size):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(size))

    def forward(self, inputs, data_samples=None, mode='tensor'):
        out = (torch.stack(inputs) * self.weight[:4]).sum(1)
        return dict(loss=out.pow(2).mean()) if mode == 'loss' else out


@DATASETS.register_module()
class ToyStageData(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, index):
        return dict(inputs=torch.full((4, ), float(index)))
"""
TOY_STAGE_CONFIG = """
custom_imports = dict(imports=['toy_stage'], allow_failed_imports=False)
default_scope = 'mmengine'
model = dict(type='ToyStageModel', size=100000)  # a 400 kB checkpoint
train_dataloader = dict(dataset=dict(type='ToyStageData'), batch_size=2, num_workers=0,
                        sampler=dict(type='DefaultSampler', shuffle=False))
train_cfg = dict(by_epoch=True, max_epochs=1)
optim_wrapper = dict(optimizer=dict(type='SGD', lr=0.1))
"""


def test_chain_tool_notices_an_edited_config_and_a_full_disk(tmp_path):
    """tools/run_chain.py on a toy chain, each run its own process: after a stage's config is
    edited the rerun says so and trains it and the next stage again; with the file size limit
    below a checkpoint (a full disk, as the tool sees it) the run ends in one line naming the
    file, and the next run continues."""
    import resource
    import signal
    (tmp_path / 'toy_stage.py').write_text(TOY_STAGE_MODULE)
    for name in ('a', 'b'):
        (tmp_path / f'{name}.py').write_text(TOY_STAGE_CONFIG)
    chain = tmp_path / 'chain.py'
    chain.write_text("stages = [dict(name='a', config='a.py'),\n"
                     "          dict(name='b', config='b.py', init_key='load_from')]\n")
    work = tmp_path / 'work'
    env = dict(os.environ, PYTHONPATH=f'{REPO}{os.pathsep}{tmp_path}')

    def run(limit=None):
        def limit_file_size():  # writes past it fail with EFBIG, as a full disk fails them
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        return run_python([sys.executable, 'tools/run_chain.py', str(chain), '--work-dir',
                               str(work)], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300, preexec_fn=limit_file_size if limit else None)

    first = run()
    assert first.returncode == 0, first.stderr[-3000:]
    (tmp_path / 'a.py').write_text(TOY_STAGE_CONFIG.replace('lr=0.1', 'lr=0.2'))
    edited = run(limit=200_000)
    assert edited.returncode == 1
    lines = [line for line in edited.stdout.splitlines() if 'under other settings' in line]
    assert lines == [f'chain: stage "a" was trained under other settings ({tmp_path}/a.py '
                     f'changed): training it from the start']
    assert 'Traceback' not in edited.stderr, edited.stderr[-3000:]
    assert edited.stderr.strip().splitlines()[-1] == (
        f'tools/run_chain.py: error: cannot save checkpoint {work}/a/epoch_1.pth: File too large '
        f'(EFBIG); nothing was replaced and no partial file was left; no checkpoint of this run '
        f'had been saved yet: free some space and run the same command (finished stages are '
        f'reused, the interrupted one resumes)')
    assert not [name for name in os.listdir(work / 'a') if '.partial' in name]

    again = run()
    assert again.returncode == 0, again.stderr[-3000:]
    assert [line for line in again.stdout.splitlines() if line.startswith('chain: stage')] == [
        f'chain: stage "a": {tmp_path}/a.py --work-dir {work}/a --launcher none --overwrite',
        'chain: stage "b" was trained under other settings (stage "a" was trained again): '
        'training it from the start',
        f'chain: stage "b": {tmp_path}/b.py --work-dir {work}/b --launcher none --overwrite '
        f'--cfg-options load_from={work}/a/epoch_1.pth']


def test_compare_quick_runs_each_kind_of_method(tmp_path):
    """The whole path for each kind of method: images only (MAE), a chain (MIM->CLIP), methods
    built on other runs (MILAN on CLIP; LiT LU on RILS and CLIP, which train first without
    being scored), one without (LiT uu) and a captioning model (MaMMUT)."""
    work = str(tmp_path / 'compare')
    methods = ['MAE', 'MIM->CLIP', 'MILAN', 'MaMMUT', 'LiT LU', 'LiT uu']
    result = run_tool('tools/compare.py', '--quick', '--work-dir', work, '--methods', *methods,
                      timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(osp.join(work, 'results.json')) as f:
        results = json.load(f)
    assert list(results) == methods
    for method, runs in results.items():
        (run, ) = runs
        with_text = method not in ('MAE', 'MILAN')
        assert ('zs_heldout' in run) == with_text and ('i2t_r1' in run) == with_text
        for key in ('linear', 'shot1', 'shot2') + (('zs_heldout', 'zs_seen', 't2i_r5')
                                                   if with_text else ()):
            assert 0 <= run[key] <= 100, (method, key)
        assert osp.isfile(run['checkpoint'])
    table = open(osp.join(work, 'results.md')).read().splitlines()
    assert len(table) == 2 + len(methods) and table[0].startswith('| method | seeds |')
    # Only the captioning model is scored on captions.
    assert [m for m, (run, ) in results.items() if 'cap_cider' in run] == ['MaMMUT']
    mammut = results['MaMMUT'][0]
    assert 0 <= mammut['cap_exact'] <= 100 and mammut['cap_cider'] >= 0
    assert len(mammut['cap_examples']) == 5
    # MILAN was taught by the CLIP run of its seed; LiT took the RILS image tower and the CLIP
    # text tower; the sources' runs are recorded where a scored run of them would be.
    clip = osp.join(work, 'CLIP', 'seed0', 'epoch_2.pth')
    rils = osp.join(work, 'RILS', 'seed0', 'epoch_2.pth')
    assert results['MILAN'][0]['sources'] == [clip]
    assert results['LiT LU'][0]['sources'] == [rils, clip]
    assert 'sources' not in results['LiT uu'][0]
    assert Image.open(osp.join(work, 'results.png')).size == (1000, 420)
    # A rerun reuses the finished runs instead of training again.
    again = run_tool('tools/compare.py', '--quick', '--work-dir', work, '--methods', 'MILAN')
    assert again.returncode == 0 and 'MILAN seed 0: reused' in again.stdout
    assert 'CLIP seed 0: reused the training' in again.stdout


def test_every_compared_method_has_its_configs():
    """Each method of the comparison names existing configs, and the overrides that hand it
    other runs' checkpoints name keys its config has."""
    from mmengine.config import Config

    from rils_mm.tools.chain import load_chain
    from rils_mm.tools.compare import METHODS
    assert len(METHODS) == 17
    for method, spec in METHODS.items():
        if 'chain' in spec:
            stages = load_chain(osp.join(REPO, spec['chain'])).stages
            assert all(osp.isfile(stage['config']) for stage in stages), method
            continue
        cfg = Config.fromfile(osp.join(REPO, spec['config']))
        for source in spec.get('sources', ()):
            assert source['method'] in METHODS
            node = cfg
            for part in source['option'].split('.'):
                node = node[part]  # the key exists
            assert isinstance(node, str) and node.endswith('.pth'), (method, source)


def test_budget_split_schedules_and_caption_recall():
    import torch
    from rils_mm.evaluation.probes import caption_recall
    from rils_mm.tools.compare import schedule_options, split_budget
    assert split_budget(3, 2) == [1, 2] and split_budget(4, 2) == [2, 2]
    assert split_budget(5, 3) == [1, 2, 2]
    try:
        split_budget(1, 2)
        raise AssertionError('a budget smaller than the chain must be refused')
    except ValueError as err:
        assert 'at least 2 epochs' in str(err)
    one = schedule_options(1, 64)
    assert 'param_scheduler.0.end=16' in one and 'param_scheduler.1.begin=16' in one
    assert 'param_scheduler.1.T_max=48' in one
    assert 'param_scheduler.1.T_max=2' in schedule_options(3, 64)
    # Images 0, 1 share the caption 'a'; image 2's caption is 'b'. A hit is any item whose
    # caption is word-for-word the query's.
    images = torch.tensor([[1., 0.], [0.6, 0.8], [0.8, 0.6]])
    texts = torch.tensor([[0.9, 0.436], [1., 0.], [0., 1.]])
    recall = caption_recall(images, texts, ['a', 'a', 'b'], topk=(1, 2))
    # i2t@1: image0 -> text1 ('a', hit); image1 -> text0 ('a', hit); image2 -> text0 (miss).
    assert recall['i2t_r1'] == pytest.approx(200 / 3)
    assert recall['i2t_r2'] == pytest.approx(200 / 3)  # image2's top-2: texts 0, 1 (both 'a')
    # t2i@1: text0 -> image2 ('b', miss); text1 -> image0 (hit); text2 -> image1 ('a', miss).
    assert recall['t2i_r1'] == pytest.approx(100 / 3)


def test_milan_demo_is_taught_by_the_clip_stage(tmp_path):
    """configs/milan/demo_chain.py: the demo CLIP, then MILAN whose frozen teacher is loaded
    (checked) from the CLIP stage's checkpoint, each stage in its own process's chain step."""
    work = str(tmp_path / 'milan')
    options = TINY_DATA + [f'train_dataloader.dataset.data_root={tmp_path}/demo']
    result = run_tool('tools/run_chain.py', 'configs/milan/demo_chain.py', '--work-dir', work,
                      '--cfg-options', *options)
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    clip_checkpoint = osp.join(work, 'clip', 'epoch_1.pth')
    assert re.search(r'Loaded "\*" from ' + re.escape(clip_checkpoint) +
                     r': \d+ matched, 0 missing', log), log[-3000:]
    import torch
    from rils_mm.compat import weights_only_load
    milan = weights_only_load(osp.join(work, 'milan', 'epoch_1.pth'))['state_dict']
    clip = weights_only_load(clip_checkpoint)['state_dict']
    # The teacher in the MILAN checkpoint is the CLIP stage's image tower, bitwise: frozen.
    image_keys = [k for k in clip if k.startswith(('backbone.', 'image_head.'))]
    assert len(image_keys) > 50 and not any('text_encoder' in k for k in milan)
    for key in image_keys:
        assert torch.equal(milan[f'target_generator.image_tower.{key}'], clip[key]), key
    losses = [float(v) for v in re.findall(r' loss: ([0-9.]+)', log)]
    assert losses and all(0 <= v <= 4 for v in losses)  # 2 - 2 cos
    # The MILAN encoder goes through the transfer converter; the teacher stays behind.
    converted = str(tmp_path / 'milan_encoder.pth')
    convert = run_tool('tools/model_converters/rils_to_toolbox.py',
                       osp.join(work, 'milan', 'epoch_1.pth'), converted, '--format', 'mmdet')
    assert convert.returncode == 0, convert.stderr[-3000:]
    encoder = torch.load(converted, weights_only=True)['state_dict']
    assert sorted(encoder) == sorted(k for k in milan if k.startswith('backbone.'))
    for key, value in encoder.items():
        assert torch.equal(value, milan[key]), key


def test_milan_demo_trains_to_a_decreasing_loss(tmp_path):
    """configs/milan/demo_cpu.py in its own process, taught by a demo-sized CLIP checkpoint
    written by this process: 3 epochs of 4 iterations, the loss logged at every iteration."""
    import torch
    from mmengine.config import Config
    from mmpretrain.registry import MODELS

    import rils_mm  # noqa: F401
    torch.manual_seed(0)
    teacher = MODELS.build(Config.fromfile(osp.join(REPO, 'configs/clip/demo_cpu.py')).model)
    teacher.init_weights()
    teacher_file = str(tmp_path / 'clip.pth')
    torch.save(dict(state_dict=teacher.state_dict()), teacher_file)
    options = [option for option in TINY_DATA if not option.startswith(
        ('train_cfg', 'param_scheduler', 'train_dataloader.dataset.samples_per_epoch'))]
    result = run_tool('tools/train.py', 'configs/milan/demo_cpu.py', '--work-dir',
                      str(tmp_path / 'work'), '--cfg-options', *options,
                      f'train_dataloader.dataset.data_root={tmp_path}/demo',
                      'train_dataloader.dataset.samples_per_epoch=64', 'train_cfg.max_epochs=3',
                      'param_scheduler.1.end=3', 'param_scheduler.1.T_max=2',
                      'default_hooks.logger.interval=1',
                      f'model.target_generator.checkpoint={teacher_file}')
    assert result.returncode == 0, result.stderr[-3000:]
    losses = [float(v) for v in re.findall(r' loss: ([0-9.]+)', result.stdout + result.stderr)]
    assert len(losses) == 12, losses
    assert all(0 <= v <= 4 for v in losses)  # finite, 2 - 2 cos
    assert max(losses[-3:]) < min(losses[:3]), losses


def test_mammut_demo_trains_and_captions(tmp_path):
    """configs/mammut/demo_cpu.py in its own process (3 epochs of 4 iterations); the captioning
    loss falls, and the checkpoint, loaded in this process, writes captions."""
    options = [option for option in TINY_DATA if not option.startswith(
        ('train_cfg', 'param_scheduler', 'train_dataloader.dataset.samples_per_epoch'))]
    work = tmp_path / 'work'
    result = run_tool('tools/train.py', 'configs/mammut/demo_cpu.py', '--work-dir', str(work),
                      '--cfg-options', *options,
                      f'train_dataloader.dataset.data_root={tmp_path}/demo',
                      'train_dataloader.dataset.samples_per_epoch=64', 'train_cfg.max_epochs=3',
                      'param_scheduler.1.end=3', 'param_scheduler.1.T_max=2',
                      'default_hooks.logger.interval=1')
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    captioning = [float(v) for v in re.findall(r'loss_caption: ([0-9.]+)', log)]
    contrastive = [float(v) for v in re.findall(r'loss_contrastive: ([0-9.]+)', log)]
    assert len(captioning) == len(contrastive) == 12
    assert max(captioning[-3:]) < min(captioning[:3]), captioning

    from rils_mm.tools.compare import build_trained_model
    with open(work / 'last_checkpoint') as f:
        checkpoint = f.read().strip()
    model = build_trained_model(osp.join(REPO, 'configs/mammut/demo_cpu.py'), checkpoint)
    import torch
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    inputs = model.data_preprocessor(dict(inputs=images), False)['inputs']
    samples = model(inputs, mode='predict')
    assert len(samples) == 2 and all(isinstance(s.pred_caption, str) for s in samples)
    assert all(len(s.pred_caption_ids) <= 16 for s in samples)


def test_captioning_benchmark_config_on_a_coco_caption_file(tmp_path):
    """configs/benchmarks/captioning/mammut_vit-b16_caption_coco.py through tools/test.py, in
    its own process, on a COCO-format caption file and a MaMMUT checkpoint (tiny towers) written
    by this process: every reference caption of an image counts."""
    import json as json_module

    import torch
    from mmengine.config import Config
    from mmpretrain.registry import MODELS

    import rils_mm  # noqa: F401
    images_dir = tmp_path / 'val2017'
    images_dir.mkdir()
    annotations = dict(images=[], annotations=[])
    for i in range(3):
        Image.new('RGB', (40, 32), (80 * i, 40, 200)).save(images_dir / f'{i}.jpg')
        annotations['images'].append(dict(id=i, file_name=f'{i}.jpg'))
        for j in range(2):
            annotations['annotations'].append(dict(id=10 * i + j, image_id=i,
                                                   caption=f'caption {j} of image {i}'))
    ann_file = tmp_path / 'captions.json'
    ann_file.write_text(json_module.dumps(annotations))
    # The benchmark config with tiny towers, as a user's derived config would shrink it.
    config = tmp_path / 'caption_tiny.py'
    config.write_text(
        f"_base_ = ['{REPO}/configs/benchmarks/captioning/mammut_vit-b16_caption_coco.py']\n"
        "model = dict(backbone=dict(arch=dict(_delete_=True, embed_dims=32, num_layers=2,\n"
        "                                     num_heads=4, feedforward_channels=64),\n"
        "                           img_size=32, patch_size=8),\n"
        "             text_encoder=dict(width=32, heads=4, layers=2), embed_dims=16,\n"
        "             max_caption_length=4)\n")
    cfg = Config.fromfile(str(config))
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    checkpoint = str(tmp_path / 'mammut_tiny.pth')
    torch.save(dict(state_dict=model.state_dict()), checkpoint)
    options = ['test_dataloader.dataset.pipeline.1.scale=32',
               'test_dataloader.dataset.pipeline.2.crop_size=32',
               'test_dataloader.batch_size=2', 'test_dataloader.num_workers=0',
               'test_dataloader.persistent_workers=False',
               f'test_dataloader.dataset.data_root={tmp_path}',
               f'test_dataloader.dataset.ann_file={ann_file}',
               'test_dataloader.dataset.data_prefix.img_path=val2017']
    out = tmp_path / 'metrics.json'
    result = run_tool('tools/test.py', str(config), checkpoint, '--work-dir', str(tmp_path / 'w'),
                      '--out', str(out), '--cfg-options', *options)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json_module.loads(out.read_text())
    assert set(metrics) >= {'caption/bleu4', 'caption/cider', 'caption/exact_match'}, metrics
    assert metrics['caption/exact_match'] == 0.0  # an untrained model
    # The evaluation set hands the metric all of an image's captions.
    from mmpretrain.registry import DATASETS
    dataset = DATASETS.build(dict(cfg.test_dataloader.dataset, data_root=str(tmp_path),
                                  ann_file=str(ann_file)))
    sample = dataset[1]['data_samples']
    assert sorted(sample.captions) == ['caption 0 of image 1', 'caption 1 of image 1']


def test_cheaper_rils_then_its_unmasked_phase(tmp_path):
    """configs/rils/demo_flip_chain.py: the patch-dropped demo RILS, then plain RILS starting
    from the whole first-stage model (checked: every key), each in its own process."""
    work = str(tmp_path / 'flip')
    options = TINY_DATA + [f'train_dataloader.dataset.data_root={tmp_path}/demo',
                           'param_scheduler.0.end=0.5']  # a warm-up of 1 of the 2 iterations
    result = run_tool('tools/run_chain.py', 'configs/rils/demo_flip_chain.py', '--work-dir',
                      work, '--cfg-options', *options)
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    first = osp.join(work, 'flip', 'epoch_1.pth')
    loaded = re.search(r'Loaded "\*" from ' + re.escape(first) + r': (\d+) matched, 0 missing',
                       log)
    assert loaded and int(loaded.group(1)) > 50, log[-3000:]
    import torch
    from rils_mm.compat import weights_only_load
    flip = weights_only_load(first)['state_dict']
    unmasked = weights_only_load(osp.join(work, 'unmasked', 'epoch_1.pth'))['state_dict']
    assert sorted(flip) == sorted(unmasked)
    assert not torch.equal(flip['backbone.layers.0.attn.qkv.weight'],
                           unmasked['backbone.layers.0.attn.qkv.weight'])  # it trained on
    losses = [float(v) for v in re.findall(r' loss_reconstruction: ([0-9.]+)', log)]
    assert losses and all(v >= 0 for v in losses)


def test_cheaper_rils_b16_config_is_rils_with_dropped_patches():
    from mmengine.config import Config
    rils = Config.fromfile(osp.join(REPO, 'configs/rils/pretrain_b16.py'))
    flip = Config.fromfile(osp.join(REPO, 'configs/rils/pretrain_b16_flip.py'))
    assert flip.model.intact_keep_ratio == 0.5 and flip.model.backbone.mask_ratio == 0.5
    flip.model.pop('intact_keep_ratio')
    flip.model.backbone.mask_ratio = rils.model.backbone.mask_ratio
    assert flip.model.to_dict() == rils.model.to_dict()
    for key in ('optim_wrapper', 'param_scheduler', 'train_dataloader', 'train_cfg'):
        assert flip[key] == rils[key], key
    unmasked = Config.fromfile(osp.join(REPO, 'configs/rils/pretrain_b16_flip_unmasked.py'))
    assert unmasked.model.intact_keep_ratio == 1.0
    assert unmasked.model.backbone.mask_ratio == 0.75
    assert unmasked.model.init_cfg.type == 'CheckedPretrained'


def test_run_chain_trains_every_stage_without_validation_on_request(monkeypatch, capsys):
    """``tools/run_chain.py --no-validate`` hands ``--no-validate`` to every stage's
    ``tools/train.py`` (the B/16 image-text stages validate on data/imagenet/val)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location('run_chain_tool',
                                                  osp.join(REPO, 'tools', 'run_chain.py'))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    calls = []
    monkeypatch.setattr(tool, 'run_chain',
                        lambda *args, **kwargs: calls.append(kwargs['train_args']) or ['x.pth'])
    tool.main(['configs/two_stage/mim_to_clip_b16.py', '--no-validate'])
    tool.main(['configs/two_stage/mim_to_clip_b16.py'])
    assert calls == [['--launcher', 'none', '--no-validate'], ['--launcher', 'none']]


def test_compare_reuses_a_run_only_while_its_code_is_unchanged(tmp_path, monkeypatch):
    """A run record made by other code is trained again; one made by this code is reused; the
    fingerprint follows file contents and names."""
    from rils_mm.tools import compare
    trained_runs = []

    def fake_train(method, run_dir, seed, epochs, options):
        trained_runs.append(method)
        os.makedirs(run_dir, exist_ok=True)
        checkpoint = osp.join(run_dir, 'epoch_1.pth')
        open(checkpoint, 'w').close()
        return checkpoint

    monkeypatch.setattr(compare, 'train_method', fake_train)
    work = str(tmp_path / 'work')
    settings = compare._training_settings(work, 'MAE', 0, 1, [], print)
    assert settings['code'] == compare.code_fingerprint()
    compare._train_or_reuse(work, 'MAE', 0, settings, print)
    compare._train_or_reuse(work, 'MAE', 0, settings, print)
    assert trained_runs == ['MAE']
    record_path = osp.join(compare.method_run_dir(work, 'MAE', 0), 'train.json')
    record = json.load(open(record_path))
    json.dump(dict(record, code='0123456789abcdef'), open(record_path, 'w'))
    compare._train_or_reuse(work, 'MAE', 0, settings, print)
    assert trained_runs == ['MAE', 'MAE']
    # The digest of a small tree: changes with a file's content and with its name.
    tree = tmp_path / 'tree'
    (tree / 'pkg').mkdir(parents=True)
    (tree / 'pkg' / 'a.py').write_text('x = 1\n')
    first = compare.code_fingerprint(str(tree), ['pkg'])
    assert compare.code_fingerprint(str(tree), ['pkg']) == first
    (tree / 'pkg' / 'a.py').write_text('x = 2\n')
    second = compare.code_fingerprint(str(tree), ['pkg'])
    (tree / 'pkg' / 'a.py').rename(tree / 'pkg' / 'b.py')
    assert len({first, second, compare.code_fingerprint(str(tree), ['pkg'])}) == 3


def test_in_process_training_stops_its_dataloader_workers(tmp_path):
    """``train_main`` in this process (as chains and compare.py call it) with persistent
    dataloader workers: once it returns, none of the run's worker processes is left, although
    the returned runner still holds its dataloader."""
    import multiprocessing

    from rils_mm.tools.cli import train_main
    options = [o for o in TINY_DATA if not o.startswith(('train_dataloader.num_workers',
                                                         'train_dataloader.persistent'))]
    before = set(multiprocessing.active_children())
    runner = train_main([osp.join(REPO, 'configs/clip/demo_cpu.py'), '--work-dir',
                         str(tmp_path / 'work'), '--cfg-options', *options,
                         'train_dataloader.num_workers=2',
                         'train_dataloader.persistent_workers=True',
                         f'train_dataloader.dataset.data_root={tmp_path}/demo'])
    assert runner.train_loop.iter == 2
    assert runner.train_dataloader.persistent_workers
    assert set(multiprocessing.active_children()) - before == set()


@pytest.mark.parametrize('persistent', [False, True])
def test_release_reaches_the_iteration_loops_own_iterator(persistent):
    """IterBasedTrainLoop keeps its own iterator over the loader (wrapped by DataResumeHook
    after a resume): its workers are stopped too, persistent or not."""
    import multiprocessing
    from types import SimpleNamespace

    import torch
    from mmengine.runner.loops import _InfiniteDataloaderIterator
    from torch.utils.data import DataLoader

    from rils_mm.engine.hooks.data_resume_hook import _SkipBatches
    from rils_mm.tools.cli import release_dataloader_workers
    before = set(multiprocessing.active_children())
    loader = DataLoader(torch.arange(64), batch_size=4, num_workers=2,
                        persistent_workers=persistent)
    iterator = _SkipBatches(_InfiniteDataloaderIterator(loader), 1)
    assert next(iterator) is None and next(iterator).tolist() == [0, 1, 2, 3]
    assert set(multiprocessing.active_children()) - before
    loop = SimpleNamespace(dataloader=loader, dataloader_iterator=iterator)
    release_dataloader_workers(SimpleNamespace(_train_loop=loop, _val_loop=None,
                                               _test_loop=None))
    assert set(multiprocessing.active_children()) - before == set()
