"""``tools/train.py --remote-dir s3://...``: checkpoints and logs on an object store, a kill
during an upload, and ``--resume`` on a "new node" (an empty work dir, a new process).

The object store is a real S3 API: moto's server on 127.0.0.1, started and stopped here, with
fake credentials in the environment (as a user gives them) and ``AWS_ENDPOINT_URL`` pointing
at it. Each run is ``tools/train.py`` in its own process on the tiny demo (3 epochs of 2
iterations, a checkpoint per epoch, ``max_keep_ckpts=2``).
"""
import logging
import os
import os.path as osp
import re
import sys

import pytest
import torch
from moto import server as moto_server  # test requirements: moto[server], s3fs
from tiny_demo import tiny_data, tiny_run

import rils_mm  # noqa: F401  (weights-only loading of Runner checkpoints)
from tool_processes import run_python  # noqa: E402

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DEMO = osp.join(REPO, 'configs', 'rils', 'demo_cpu.py')
BUCKET = 'rils-runs'
SECRET = 'fake-secret-6d1f0c'  # must appear in no log, config or output
EPOCHS = 3

# Runs train.py with s3fs's upload patched to send half of ``argv[1]`` as the first part of a
# multipart upload (which S3 never shows until it is completed) and SIGKILL its own process.
KILL_DURING_UPLOAD = '''
import os, runpy, signal, sys
import s3fs
name = sys.argv[1]
upload = s3fs.S3FileSystem._put_file

async def put_then_die(self, lpath, rpath, *args, **kwargs):
    if rpath.rstrip('/').endswith('/' + name):
        bucket, key, _ = self.split_path(rpath)
        with open(lpath, 'rb') as file:
            data = file.read()
        part = await self._call_s3('create_multipart_upload', Bucket=bucket, Key=key)
        await self._call_s3('upload_part', Bucket=bucket, Key=key, PartNumber=1,
                            UploadId=part['UploadId'], Body=data[:len(data) // 2])
        os.kill(os.getpid(), signal.SIGKILL)
    return await upload(self, lpath, rpath, *args, **kwargs)

s3fs.S3FileSystem._put_file = put_then_die
sys.argv = ['tools/train.py'] + sys.argv[2:]
sys.path.insert(0, 'tools')  # as `python tools/train.py` has it
runpy.run_path('tools/train.py', run_name='__main__')
'''


@pytest.fixture(scope='module')
def s3(tmp_path_factory):
    """An S3 endpoint on 127.0.0.1 with one bucket; the environment a user would set."""
    logging.getLogger('werkzeug').setLevel(logging.ERROR)
    server = moto_server.ThreadedMotoServer(ip_address='127.0.0.1', port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = dict(AWS_ACCESS_KEY_ID='fake-key-id', AWS_SECRET_ACCESS_KEY=SECRET,
               AWS_ENDPOINT_URL=f'http://{host}:{port}', AWS_DEFAULT_REGION='us-east-1',
               AWS_EC2_METADATA_DISABLED='true')
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    import s3fs
    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.mkdir(BUCKET)
    try:
        yield dict(fs=fs, root=tmp_path_factory.mktemp('remote'), env=env)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        s3fs.S3FileSystem.clear_instance_cache()
        server.stop()


def options(data_root):
    shrink = [opt for opt in tiny_run(32) if not opt.startswith('train_cfg.max_epochs')]
    return [*shrink, *tiny_data(32), f'train_dataloader.dataset.data_root={data_root}',
            f'train_cfg.max_epochs={EPOCHS}', 'default_hooks.checkpoint.interval=1',
            'default_hooks.checkpoint.max_keep_ckpts=2']


def train(s3, work_dir, *extra, wrapper=None):
    """``tools/train.py`` (or the kill wrapper) in its own process; the completed process."""
    command = ([sys.executable, '-c', KILL_DURING_UPLOAD, *wrapper] if wrapper else
               [sys.executable, 'tools/train.py'])
    command += [DEMO, '--work-dir', str(work_dir), '--no-validate', *extra, '--cfg-options',
                *options(s3['root'] / 'data')]
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1',
               PYTHONUNBUFFERED='1')
    return run_python(command, cwd=REPO, env=env, capture_output=True, text=True,
                      timeout=600)


def remote_files(fs, prefix):
    fs.invalidate_cache()
    return sorted(path[len(f'{BUCKET}/{prefix}/'):] for path in fs.find(f'{BUCKET}/{prefix}'))


def weights(path):
    return torch.load(path, map_location='cpu', weights_only=True)['state_dict']


def assert_no_secret(*texts_and_folders):
    for item in texts_and_folders:
        if osp.isdir(str(item)):
            for folder, _, files in os.walk(item):
                for name in files:
                    with open(osp.join(folder, name), 'rb') as file:
                        assert SECRET.encode() not in file.read(), osp.join(folder, name)
        else:
            assert SECRET not in item


def test_upload_kill_during_upload_and_resume_on_a_new_node(s3, tmp_path):
    fs = s3['fs']
    # 1. Uninterrupted: every checkpoint uploaded, last_checkpoint names the last one by file
    # name, pruned as locally (max_keep_ckpts=2), the log folder copied.
    reference = tmp_path / 'reference'
    result = train(s3, reference, '--remote-dir', f's3://{BUCKET}/reference')
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    files = remote_files(fs, 'reference')
    assert [f for f in files if f.endswith('.pth')] == ['epoch_2.pth', 'epoch_3.pth'], files
    assert fs.cat(f'{BUCKET}/reference/last_checkpoint') == b'epoch_3.pth'
    assert fs.cat(f'{BUCKET}/reference/epoch_3.pth') == (reference / 'epoch_3.pth').read_bytes()
    (log_dir, ) = [p for p in reference.iterdir() if p.is_dir()]
    for name in (f'{log_dir.name}.log', 'vis_data/scalars.json', 'vis_data/config.py'):
        assert f'{log_dir.name}/{name}' in files, files
    # The final copy is made when the run ends: the remote curves are complete.
    assert (fs.cat(f'{BUCKET}/reference/{log_dir.name}/vis_data/scalars.json')
            == (log_dir / 'vis_data' / 'scalars.json').read_bytes())
    assert_no_secret(output, reference)

    # 2. Killed while epoch_2.pth is being uploaded (half of it sent): the remote
    # last_checkpoint still names the complete epoch_1.pth, and no epoch_2.pth is visible.
    killed = tmp_path / 'killed'
    result = train(s3, killed, '--remote-dir', f's3://{BUCKET}/run', wrapper=['epoch_2.pth'])
    assert result.returncode == -9, (result.stdout + result.stderr)[-4000:]
    assert (killed / 'epoch_2.pth').is_file()  # saved locally before the upload began
    assert remote_files(fs, 'run')[-2:] == ['epoch_1.pth', 'last_checkpoint']
    assert fs.cat(f'{BUCKET}/run/last_checkpoint') == b'epoch_1.pth'

    # 2b. The same node resumes from its local epoch_2.pth (newer than the remote copy) and
    # uploads it first (to a copy of the remote dir as the kill left it).
    for name in ('epoch_1.pth', 'last_checkpoint'):
        fs.copy(f'{BUCKET}/run/{name}', f'{BUCKET}/same-node/{name}')
    result = train(s3, killed, '--resume', '--remote-dir', f's3://{BUCKET}/same-node')
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert re.search(r'resumed epoch: 2, iter: 4', output), output[-4000:]
    assert output.index('Uploaded epoch_2.pth') < output.index('Epoch(train) [3][1/2]')
    files = remote_files(fs, 'same-node')
    assert [f for f in files if f.endswith('.pth')] == ['epoch_2.pth', 'epoch_3.pth'], files

    # 3. A new node: an empty work dir, a new process, --resume with the remote dir. It
    # downloads epoch_1.pth, resumes exactly and ends with the uninterrupted run's weights.
    new_node = tmp_path / 'new_node'
    result = train(s3, new_node, '--resume', '--remote-dir', f's3://{BUCKET}/run')
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert f'downloaded s3://{BUCKET}/run/epoch_1.pth' in output
    assert re.search(r'resumed epoch: 1, iter: 2', output), output[-4000:]
    expected, got = weights(reference / 'epoch_3.pth'), weights(new_node / 'epoch_3.pth')
    assert expected.keys() == got.keys()
    for key, value in expected.items():
        assert torch.equal(got[key], value), f'{key} differs after the resume on a new node'
    files = remote_files(fs, 'run')
    assert [f for f in files if f.endswith('.pth')] == ['epoch_2.pth', 'epoch_3.pth'], files
    assert fs.cat(f'{BUCKET}/run/last_checkpoint') == b'epoch_3.pth'
    assert fs.cat(f'{BUCKET}/run/epoch_3.pth') == (new_node / 'epoch_3.pth').read_bytes()
    assert_no_secret(output, killed, new_node)
    for key, value in expected.items():  # and the same node's resume
        assert torch.equal(weights(killed / 'epoch_3.pth')[key], value), key


def run_in_process(argv, capsys):
    """``tools/train.py ARGV`` in this process: (exit status, the error lines)."""
    from rils_mm.tools.cli import run_cli, train_main
    with pytest.raises(SystemExit) as exit_info:
        run_cli(train_main, argv, prog='tools/train.py')
    captured = capsys.readouterr()
    output = captured.out + captured.err
    assert 'Traceback' not in output
    assert_no_secret(output)
    return exit_info.value.code, [line for line in captured.err.splitlines()
                                  if line.startswith('tools/train.py: error:')]


def config_with_hook(tmp_path, **hook):
    path = tmp_path / 'remote_config.py'
    path.write_text(f'_base_ = {DEMO!r}\ncustom_hooks = [dict(type="DataResumeHook"), '
                    f'dict(type="RemoteCheckpointHook", **{hook!r})]\n')
    return str(path)


def test_bad_remote_dirs_are_one_line_before_the_runner_is_built(s3, tmp_path, capsys,
                                                                   monkeypatch):
    import s3fs
    fs = s3['fs']
    work = str(tmp_path / 'work')
    # A real checkpoint's bytes, damaged: the download is refused, nothing lands in the work dir.
    fs.pipe(f'{BUCKET}/damaged/last_checkpoint', b'epoch_1.pth')
    fs.pipe(f'{BUCKET}/damaged/epoch_1.pth', b'PK\x03\x04' + b'\0' * 100)
    fs.pipe(f'{BUCKET}/dangling/last_checkpoint', b'epoch_9.pth')
    cases = [
        ([DEMO, '--remote-dir', 's3://no-such-bucket/run'],
         '--remote-dir s3://no-such-bucket/run: the bucket (or folder above the run) does not '
         'exist'),
        ([DEMO, '--remote-dir', f's3://fake-key-id:{SECRET}@{BUCKET}/run'],
         f'--remote-dir s3://***@{BUCKET}/run: credentials in the URL are refused'),
        ([config_with_hook(tmp_path, remote_dir=f's3://{BUCKET}/run'), '--cfg-options',
          f'custom_hooks.1.storage_options.secret={SECRET}'],
         'RemoteCheckpointHook storage_options.secret: credentials in the config or '
         '--cfg-options are refused'),
        ([DEMO, '--remote-dir', 'nosuchfs://bucket/run'],
         '--remote-dir nosuchfs://bucket/run: Protocol not known: nosuchfs'),
        ([DEMO, '--remote-dir', f's3://{BUCKET}/dangling'],
         f'remote dir s3://{BUCKET}/dangling holds the checkpoints of an earlier run '
         f'(last_checkpoint names epoch_9.pth): give --resume'),
        ([DEMO, '--resume', '--remote-dir', f's3://{BUCKET}/dangling'],
         f's3://{BUCKET}/dangling/last_checkpoint names epoch_9.pth, which is not in '
         f's3://{BUCKET}/dangling'),
        ([DEMO, '--resume', '--remote-dir', f's3://{BUCKET}/damaged'],
         f'checkpoint s3://{BUCKET}/damaged/epoch_1.pth is damaged or not a PyTorch checkpoint'),
    ]
    for argv, expected in cases:
        status, errors = run_in_process([*argv, '--work-dir', work], capsys)
        assert status == 1 and len(errors) == 1 and expected in errors[0], (argv, errors)
        assert not [n for n in os.listdir(work) if n.endswith('.pth') or '.partial-' in n]
    # No credentials at all (none in the environment, no profile, no instance metadata).
    for key in ('AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY'):
        monkeypatch.delenv(key)
    monkeypatch.setenv('AWS_SHARED_CREDENTIALS_FILE', str(tmp_path / 'none'))
    monkeypatch.setenv('AWS_CONFIG_FILE', str(tmp_path / 'none'))
    s3fs.S3FileSystem.clear_instance_cache()
    status, errors = run_in_process([DEMO, '--remote-dir', f's3://{BUCKET}/run', '--work-dir',
                                     work], capsys)
    assert status == 1 and len(errors) == 1, errors
    assert (f'--remote-dir s3://{BUCKET}/run is not writable: no credentials found: give '
            f'credentials in the environment') in errors[0]
    # s3fs not installed.
    import importlib
    registry = importlib.import_module('fsspec.registry')  # the module, not its mapping
    monkeypatch.delitem(registry._registry, 's3', raising=False)
    monkeypatch.setitem(sys.modules, 's3fs', None)
    status, errors = run_in_process([DEMO, '--remote-dir', f's3://{BUCKET}/run', '--work-dir',
                                     work], capsys)
    assert status == 1 and len(errors) == 1, errors
    assert errors[0].startswith(f'tools/train.py: error: --remote-dir s3://{BUCKET}/run: s3:// '
                                f'needs a package that is not installed (')
    assert errors[0].endswith('): pip install s3fs')


def test_a_failed_upload_stops_the_run_in_one_line(s3, tmp_path):
    """Uploads that keep failing (here: the bucket is gone) are retried, then the run stops
    with one line naming the file, saying the local copy is intact and how to go on."""
    from types import SimpleNamespace

    import s3fs
    from mmengine.logging import MessageHub

    from rils_mm.engine.errors import RunStopped
    from rils_mm.engine.hooks import RemoteCheckpointHook
    s3fs.S3FileSystem.clear_instance_cache()  # not one cached without credentials
    checkpoint = tmp_path / 'epoch_1.pth'
    torch.save(dict(state_dict={}), checkpoint)
    hub = MessageHub.get_instance('remote-upload-failure')
    hub.update_info('last_ckpt', str(checkpoint))
    runner = SimpleNamespace(message_hub=hub, hooks=[], log_dir=str(tmp_path / 'logs'))
    hook = RemoteCheckpointHook('s3://gone-bucket/run', retries=2, retry_wait=0)
    with pytest.raises(RunStopped) as error:
        hook.after_train_epoch(runner)
    assert str(error.value) == (
        f'cannot upload checkpoint {checkpoint} to s3://gone-bucket/run after 2 tries '
        f'(FileNotFoundError: The specified bucket does not exist); the local copy is intact '
        f'and no checkpoint of this run is in s3://gone-bucket/run yet: fix the connection and '
        f'continue with tools/train.py CONFIG --resume --remote-dir s3://gone-bucket/run')


def test_resume_downloads_once_per_node_and_only_a_newer_checkpoint(tmp_path, monkeypatch):
    """Processes of one node resuming together download the remote checkpoint once; a local
    checkpoint as new as the remote one is kept. The remote dir here is a plain folder
    (``file://``): uploads go to a temporary name and are moved into place."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    from mmengine.config import Config

    from rils_mm.engine.remote_store import RemoteStore
    from rils_mm.tools import remote_checkpoints
    from rils_mm.tools.cli import check_checkpoint_file
    remote, work = tmp_path / 'remote', tmp_path / 'work'
    remote.mkdir()
    store = RemoteStore(f'file://{remote}')
    assert not store.whole_objects
    local = tmp_path / 'local.pth'
    torch.save(dict(state_dict=dict(w=torch.arange(4.))), local)
    store.put_file(str(local), 'iter_4.pth')
    store.put_bytes(b'iter_4.pth', 'last_checkpoint')
    assert sorted(os.listdir(remote)) == ['iter_4.pth', 'last_checkpoint']
    assert (remote / 'iter_4.pth').read_bytes() == local.read_bytes()

    downloads = []
    download = RemoteStore.download

    def slow_download(self, *args):
        downloads.append(threading.get_ident())
        time.sleep(0.3)  # the other processes arrive while it runs
        return download(self, *args)

    monkeypatch.setattr(RemoteStore, 'download', slow_download)
    cfg = Config(dict(work_dir=str(work), custom_hooks=[
        dict(type='RemoteCheckpointHook', remote_dir=f'file://{remote}')]))

    def fetch(local_checkpoint):
        return remote_checkpoints.fetch_resume_checkpoint(cfg, local_checkpoint,
                                                          check_checkpoint_file)

    with ThreadPoolExecutor(3) as pool:
        assert list(pool.map(fetch, [None] * 3)) == [str(work / 'iter_4.pth')] * 3
    assert len(downloads) == 1
    assert (work / 'iter_4.pth').read_bytes() == local.read_bytes()
    assert (work / 'last_checkpoint').read_text() == str(work / 'iter_4.pth')
    assert not [n for n in os.listdir(work) if '.partial-' in n]
    assert fetch(str(work / 'iter_4.pth')) is None  # as new: resume from the local one
    assert fetch(str(tmp_path / 'iter_6.pth')) is None  # newer locally
    assert fetch(str(tmp_path / 'epoch_1.pth')) is None  # another kind: the local one
    assert fetch(str(tmp_path / 'iter_2.pth')) == str(work / 'iter_4.pth')  # already here
    assert len(downloads) == 1
    # A run over several nodes: only rank 0's node saved locally, so every node takes the
    # remote checkpoint, even where a newer local one exists.
    monkeypatch.setenv('WORLD_SIZE', '16')
    monkeypatch.setenv('LOCAL_WORLD_SIZE', '8')
    assert fetch(str(tmp_path / 'iter_6.pth')) == str(work / 'iter_4.pth')
    monkeypatch.delenv('WORLD_SIZE')
    monkeypatch.delenv('LOCAL_WORLD_SIZE')
    # --overwrite: a new run into the remote dir drops the old run's pointer, so a --resume
    # before the new run's first save does not continue the old run.
    remote_checkpoints.prepare_remote_dir(cfg, None, resume=None, overwrite=True)
    assert sorted(os.listdir(remote)) == ['iter_4.pth']
    assert fetch(None) is None


def test_best_checkpoints_and_pruning_follow_the_local_ones(tmp_path):
    """With a plain-folder remote dir: each new checkpoint, then last_checkpoint, then the
    checkpoints max_keep_ckpts dropped are deleted; a new best_*.pth replaces the old one."""
    from collections import deque
    from types import SimpleNamespace

    from mmengine.hooks import CheckpointHook
    from mmengine.logging import MessageHub

    from rils_mm.engine.hooks import RemoteCheckpointHook
    work, remote = tmp_path / 'work', tmp_path / 'remote'
    (work / 'logs' / 'vis_data').mkdir(parents=True)
    (work / 'logs' / 'vis_data' / 'scalars.json').write_text('{}\n')
    remote.mkdir()
    (remote / 'notes.txt').write_text('not a checkpoint: kept')
    checkpoint_hook = CheckpointHook(interval=1, max_keep_ckpts=2)
    hub = MessageHub.get_instance('remote-best-and-pruning')
    runner = SimpleNamespace(message_hub=hub, hooks=[checkpoint_hook],
                             log_dir=str(work / 'logs'))
    hook = RemoteCheckpointHook(f'file://{remote}')
    hook.before_train(runner)
    for epoch, best in ((1, 1), (2, 1), (3, 3)):
        path = work / f'epoch_{epoch}.pth'
        torch.save(dict(epoch=epoch), path)
        checkpoint_hook.keep_ckpt_ids = deque(range(max(1, epoch - 1), epoch + 1))
        hub.update_info('last_ckpt', str(path))
        hook.after_train_epoch(runner)
        best_path = work / f'best_accuracy_epoch_{best}.pth'
        if not best_path.exists():
            torch.save(dict(best=best), best_path)
        hub.update_info('best_ckpt', str(best_path))
        hook.after_val_epoch(runner, dict(accuracy=best))
        assert (remote / 'last_checkpoint').read_text() == f'epoch_{epoch}.pth'
    assert sorted(os.listdir(remote)) == [
        'best_accuracy_epoch_3.pth', 'epoch_2.pth', 'epoch_3.pth', 'last_checkpoint', 'logs',
        'notes.txt']
    assert (remote / 'epoch_3.pth').read_bytes() == (work / 'epoch_3.pth').read_bytes()
    assert (remote / 'logs' / 'vis_data' / 'scalars.json').read_text() == '{}\n'

    # A run killed while uploading its best checkpoint, resumed on the same node: the best
    # file is uploaded at the start, not only at the next new best; the resumed checkpoint,
    # already remote, is not uploaded again.
    (remote / 'best_accuracy_epoch_3.pth').unlink()
    before = (remote / 'epoch_3.pth').stat().st_mtime_ns
    resumed = RemoteCheckpointHook(f'file://{remote}')
    resumed.before_train(runner)
    assert (remote / 'best_accuracy_epoch_3.pth').read_bytes() == (
        work / 'best_accuracy_epoch_3.pth').read_bytes()
    assert (remote / 'epoch_3.pth').stat().st_mtime_ns == before


def test_a_validating_run_uploads_the_checkpoint_save_best_rewrites(tmp_path):
    """``save_best`` saves ``epoch_N.pth`` a second time after the validation (to record the
    new best score in it): the remote copy is that second version, so a run resumed on a new
    node from the remote copy keeps the best-so-far record."""
    from test_zero_shot_val import data_options, val_options
    root, remote = str(tmp_path / 'shapes'), tmp_path / 'remote'
    remote.mkdir()
    common = ['--remote-dir', f'file://{remote}', '--cfg-options', *tiny_run(64),
              'default_hooks.checkpoint.interval=1', *data_options(root), *val_options(root)]
    env = dict(os.environ, PYTHONUNBUFFERED='1')
    first = run_python([sys.executable, 'tools/train.py', 'configs/rils/demo_cpu_val.py',
                            '--work-dir', str(tmp_path / 'node1'), *common,
                            'train_cfg.max_epochs=2'],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    for name in ('epoch_1.pth', 'epoch_2.pth'):
        local, copy = tmp_path / 'node1' / name, remote / name
        assert copy.read_bytes() == local.read_bytes(), name
    record = torch.load(remote / 'epoch_2.pth', map_location='cpu', weights_only=False)
    best = record['message_hub']['runtime_info']['best_score']
    # A new node resumes from the remote copy and validates once more: the best record, and
    # with it the one best file, carry over.
    second = run_python([sys.executable, 'tools/train.py', 'configs/rils/demo_cpu_val.py',
                             '--work-dir', str(tmp_path / 'node2'), '--resume', *common,
                             'train_cfg.max_epochs=3'],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    top1 = float(re.findall(r'accuracy/top1: ([\d.]+)', second.stdout + second.stderr)[-1])
    expected = 'best_accuracy_top1_epoch_3.pth' if top1 > best else None
    bests = sorted(p.name for p in remote.glob('best_*.pth'))
    assert len(bests) == 1, bests
    if expected:
        assert bests == [expected]
    else:
        assert not list((tmp_path / 'node2').glob('best_*.pth'))  # epoch 3 was not better


def test_a_plain_folder_remote_dir_is_made_as_a_work_dir_is(tmp_path):
    """``--remote-dir file:///...``: the run's folder is created at the start check (S3 has
    no folders; a plain file system needs it before the probe and the first upload)."""
    from rils_mm.engine.remote_store import RemoteStore
    store = RemoteStore(f'file://{tmp_path}/mounted/run')
    store.check_writable()
    assert (tmp_path / 'mounted' / 'run').is_dir()
    assert os.listdir(tmp_path / 'mounted' / 'run') == []  # the probe is gone
