"""One training run per work dir (rils_mm/tools/work_dir_lock.py).

In this process: the lock's decisions (a held lock, a stale one of this host, another host's,
a live holder on a file system whose flock does not lock). Then tools/train.py as a user meets
it: a second run into a busy work dir is refused in one line naming the first; SIGTERM ends
the first and removes the lock; a lock left by a killed run is taken over by ``--resume``.
"""
import json
import os
import os.path as osp
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

import rils_mm  # noqa: F401  (the types of Runner checkpoints are allowed by weights-only loading)
from rils_mm.tools.work_dir_lock import (LOCK_NAME, WorkDirLock, WorkDirLocked, global_rank,
                                         hold_work_dir)
from tiny_demo import TINY_MODEL, tiny_data

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def dead_pid():
    """The pid of a process that has ended."""
    process = subprocess.Popen(['true'])
    process.wait()
    return process.pid


def write_record(work_dir, **record):
    os.makedirs(work_dir, exist_ok=True)
    with open(osp.join(work_dir, LOCK_NAME), 'w') as file:
        json.dump(dict(dict(host=socket.gethostname(), since=time.time()), **record), file)


def test_a_held_lock_refuses_a_second_holder_and_is_removed_on_release(tmp_path):
    first = WorkDirLock(str(tmp_path)).acquire()
    record = json.loads((tmp_path / LOCK_NAME).read_text())
    assert record['pid'] == os.getpid() and record['host'] == socket.gethostname()
    # flock belongs to an open file: a second open of the same file is refused, as another
    # process would be.
    with pytest.raises(WorkDirLocked, match=f'is in use by the training run of pid '
                       f'{os.getpid()} on host {socket.gethostname()} since '):
        WorkDirLock(str(tmp_path)).acquire()
    first.release()
    assert not (tmp_path / LOCK_NAME).exists()
    with WorkDirLock(str(tmp_path)):
        pass


def test_stale_lock_of_this_host_is_taken_over_with_a_warning(tmp_path, monkeypatch):
    import mmengine.logging
    warnings = []
    monkeypatch.setattr(mmengine.logging, 'print_log', lambda msg, **kwargs: warnings.append(
        (msg, kwargs.get('level'))))
    pid = dead_pid()
    write_record(tmp_path, pid=pid, pid_start=1)
    with WorkDirLock(str(tmp_path)):
        assert json.loads((tmp_path / LOCK_NAME).read_text())['pid'] == os.getpid()
    assert len(warnings) == 1 and warnings[0][1] == 30  # logging.WARNING
    assert warnings[0][0].startswith(f'Taking over the lock of work dir {tmp_path} left by the '
                                     f'training run of pid {pid} on host ')


def test_unlocked_file_of_another_host_is_refused_with_how_to_remove_it(tmp_path):
    write_record(tmp_path, host='gpu-node-17', pid=4242)
    with pytest.raises(WorkDirLocked, match=r'locked by the training run of pid 4242 on host '
                       r'gpu-node-17 since .*another host.*rm ' + str(tmp_path / LOCK_NAME)):
        WorkDirLock(str(tmp_path)).acquire()
    assert json.loads((tmp_path / LOCK_NAME).read_text())['host'] == 'gpu-node-17'


def test_live_holder_is_refused_where_flock_does_not_lock(tmp_path):
    # The parent of this process is alive; its record with its real start time stands for a
    # run on a file system where flock succeeds for everyone.
    from rils_mm.tools.work_dir_lock import process_start
    parent = os.getppid()
    write_record(tmp_path, pid=parent, pid_start=process_start(parent))
    with pytest.raises(WorkDirLocked, match='still running although the file system did not '
                       'keep its lock'):
        WorkDirLock(str(tmp_path)).acquire()
    # The same pid with another start time is a reused pid: the lock is stale.
    write_record(tmp_path, pid=parent, pid_start=-1)
    WorkDirLock(str(tmp_path)).acquire().release()


def test_only_global_rank_0_takes_the_lock(tmp_path, monkeypatch):
    monkeypatch.setenv('RANK', '1')
    assert global_rank() == 1
    with hold_work_dir(str(tmp_path)) as lock:
        assert lock is None and not (tmp_path / LOCK_NAME).exists()
    monkeypatch.setenv('RANK', '0')
    with hold_work_dir(str(tmp_path)) as lock:
        assert lock is not None and (tmp_path / LOCK_NAME).exists()
    assert not (tmp_path / LOCK_NAME).exists()


def train_command(work_dir, data_root, epochs, *extra):
    return [sys.executable, 'tools/train.py', 'configs/rils/demo_cpu.py', '--work-dir',
            str(work_dir), *extra, '--cfg-options', *TINY_MODEL, *tiny_data(64),
            f'train_dataloader.dataset.data_root={data_root}', 'train_dataloader.batch_size=16',
            'train_dataloader.dataset.batch_size=16',
            'train_dataloader.dataset.samples_per_epoch=64', 'train_dataloader.num_workers=0',
            'train_dataloader.persistent_workers=False', f'train_cfg.max_epochs={epochs}',
            'default_hooks.checkpoint.by_epoch=False', 'default_hooks.checkpoint.interval=1']


def test_two_runs_into_one_work_dir(tmp_path):
    """A second run is refused while the first lives; SIGTERM ends the first and frees the
    work dir; a lock left by a killed run does not stop ``--resume``."""
    work_dir, data_root = tmp_path / 'work', tmp_path / 'data'
    env = dict(os.environ, PYTHONUNBUFFERED='1')
    first = subprocess.Popen(train_command(work_dir, data_root, 200), cwd=REPO, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (work_dir / 'iter_1.pth').exists():  # the lock is taken before: training
            assert first.poll() is None, first.stderr.read()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.1)
        # A job resubmitted while it still runs: before, the second run resumed from the
        # first one's checkpoints and both wrote the same files, each ending with status 0
        # (without --resume the checkpoints alone refuse it, once there are some).
        second = subprocess.run(train_command(work_dir, data_root, 1, '--resume'), cwd=REPO,
                                env=env, capture_output=True, text=True, timeout=300)
        assert second.returncode == 2, second.stderr[-3000:]
        assert json.loads((work_dir / LOCK_NAME).read_text())['pid'] == first.pid
        lines = [line for line in second.stderr.splitlines() if 'error:' in line]
        assert len(lines) == 1 and 'Traceback' not in second.stderr
        assert lines[0].startswith(f'tools/train.py: error: work dir {work_dir} is in use by '
                                   f'the training run of pid {first.pid} on host '
                                   f'{socket.gethostname()} since ')
        assert 'another --work-dir' in lines[0]
        assert first.poll() is None  # untouched

        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        if first.poll() is None:
            first.kill()
        first.stderr.close()
    assert not (work_dir / LOCK_NAME).exists()
    latest = (work_dir / 'last_checkpoint').read_text().strip()
    epoch = torch.load(latest, weights_only=True)['meta']['epoch']

    # What kill -9 leaves: the record of a process that is gone.
    stale = dead_pid()
    write_record(work_dir, pid=stale, pid_start=1)
    third = subprocess.run(train_command(work_dir, data_root, epoch + 1, '--resume'), cwd=REPO,
                           env=env, capture_output=True, text=True, timeout=300)
    log = third.stdout + third.stderr
    assert third.returncode == 0, log[-3000:]
    assert f'Taking over the lock of work dir {work_dir} left by the training run of pid {stale}' \
        in log
    assert 'resumed epoch' in log
    assert (work_dir / f'iter_{4 * (epoch + 1)}.pth').is_file()
    assert not (work_dir / LOCK_NAME).exists()


def test_a_forked_child_does_not_keep_the_lock_of_a_killed_run(tmp_path):
    """DataLoader workers are forked: a flock shared with them outlived a SIGKILLed run and
    refused its --resume. The holder here forks a child that lives on, then is killed."""
    holder = subprocess.Popen([sys.executable, '-c', f"""
import os, sys, time
from rils_mm.tools.work_dir_lock import WorkDirLock
WorkDirLock({str(tmp_path)!r}).acquire()
if os.fork() == 0:
    time.sleep(60)
    os._exit(0)
print('locked', flush=True)
time.sleep(60)
"""], stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert holder.stdout.readline().strip() == 'locked'
        holder.kill()
        holder.wait()
        lock = WorkDirLock(str(tmp_path)).acquire()  # its child still runs
        lock.release()
    finally:
        os.killpg(holder.pid, signal.SIGKILL)


def test_a_zombie_holder_is_not_running(tmp_path):
    """A killed holder that its parent has not reaped yet is no longer running."""
    from rils_mm.tools.work_dir_lock import process_start
    process = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])
    try:
        start = process_start(process.pid)
        process.kill()
        time.sleep(0.5)  # not waited for: a zombie
        write_record(str(tmp_path), pid=process.pid, pid_start=start)
        WorkDirLock(str(tmp_path)).acquire().release()
    finally:
        process.wait()
