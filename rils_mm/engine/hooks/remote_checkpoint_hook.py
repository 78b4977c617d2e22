"""Copy checkpoints and logs to an object store as they are written (``s3://bucket/run``).

mmengine's ``CheckpointHook`` writes to one place (``out_dir`` through a file backend). Nodes
that are wiped when a job ends need the local copy to train fast and a remote copy to survive;
this hook adds the remote copy, the OpenMMLab way: a registered hook in ``custom_hooks``, or
``tools/train.py --remote-dir URL``. It runs after ``CheckpointHook`` (priority ``LOWEST``) and,
on rank 0, after each save:

1. uploads the new ``epoch_N.pth``/``iter_N.pth`` whole (:meth:`RemoteStore.put_file`);
2. then writes the remote ``last_checkpoint`` (the file name, relative to the remote dir);
3. then deletes the remote checkpoints that ``max_keep_ckpts`` no longer keeps, and a
   replaced ``best_*.pth``;
4. copies the run's log folder (``<work_dir>/<timestamp>/``: the log, ``vis_data/`` with
   ``scalars.json`` and the dumped config), also when training ends.

A failed upload (network down, bucket gone) is retried ``retries`` times, ``retry_wait``,
twice that, ... seconds apart; then the run stops (:class:`RunStopped`, one line) naming the
file, saying that the local copy is intact and how to continue with ``--resume``. Training on
without a remote copy would lose the run when the node is wiped. A failed log upload only
warns: the next one copies the whole folder again.

``tools/train.py --resume`` reads the remote copy back (:mod:`rils_mm.tools.remote_checkpoints`).
"""
import os
import os.path as osp
import re
import time
from typing import Callable, Optional

from mmengine.dist import is_main_process
from mmengine.hooks import CheckpointHook, Hook
from mmengine.logging import print_log
from mmpretrain.registry import HOOKS

from rils_mm.engine.errors import RunStopped
from rils_mm.engine.remote_store import POINTER, RemoteStore, describe


@HOOKS.register_module()
class RemoteCheckpointHook(Hook):
    """Upload each checkpoint, then the remote ``last_checkpoint``, then the logs.

    Args:
        remote_dir (str): An fsspec URL, e.g. ``s3://bucket/run`` (needs ``s3fs``).
            Credentials come from the environment only.
        storage_options (dict, optional): Non-secret file system options
            (``client_kwargs=dict(region_name='eu-west-1')``); secret-like keys are refused.
        upload_logs (bool): Copy the log folder too. Defaults to True.
        retries (int): Tries per upload before the run stops. Defaults to 3.
        retry_wait (float): Seconds before the second try (doubling). Defaults to 2.
    """

    priority = 'LOWEST'  # after CheckpointHook (VERY_LOW) has saved

    def __init__(self, remote_dir: str, storage_options: Optional[dict] = None,
                 upload_logs: bool = True, retries: int = 3, retry_wait: float = 2.0) -> None:
        self.store = RemoteStore(remote_dir, storage_options)
        self.upload_logs = upload_logs
        self.retries = max(1, int(retries))
        self.retry_wait = float(retry_wait)
        # (local path, size, mtime) of the last uploaded checkpoint, as it was when uploaded
        self._uploaded: Optional[tuple] = None
        self._best: dict = {}  # message hub key -> local path of the uploaded best checkpoint

    def before_run(self, runner) -> None:
        if is_main_process():
            self.store.check_writable()

    def before_train(self, runner) -> None:
        # After a resume the hub names the resumed checkpoints, uploaded by the earlier run;
        # except when it was killed during that upload and resumes on the same node from the
        # local copy: then that copy is uploaded now, so the remote one is as new.
        info = runner.message_hub.runtime_info
        last = info.get('last_ckpt')
        self._uploaded = self._signature(last) if last and osp.isfile(last) else None
        self._best = {k: v for k, v in info.items() if k.startswith('best_ckpt')}
        if not is_main_process():
            return
        if (self._uploaded is not None
                and self.store.last_checkpoint() != osp.basename(self._uploaded[0])):
            self._uploaded = None
        # A best checkpoint whose upload a kill interrupted is uploaded now, not only at the
        # next new best.
        try:
            remote = set(self.store.names())
        except Exception as err:  # listing is a convenience here; uploads still check
            print_log(f'Cannot list {self.store.url}: {describe(err)}', logger='current',
                      level=30)
            remote = None
        if remote is not None:
            for key, path in list(self._best.items()):
                if path and osp.isfile(path) and osp.basename(path) not in remote:
                    del self._best[key]
        self._sync(runner)

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        self._sync(runner)

    def after_train_epoch(self, runner) -> None:
        self._sync(runner)

    def after_val_epoch(self, runner, metrics=None) -> None:
        self._sync(runner)  # save_best writes best_*.pth here

    def after_run(self, runner) -> None:
        self._sync(runner, logs=True)

    def _sync(self, runner, logs: bool = False) -> None:
        """Upload what ``CheckpointHook`` saved since the last call (rank 0 only)."""
        if not is_main_process():
            return
        uploaded = self._upload_last(runner) | self._upload_best(runner)
        if (uploaded or logs) and self.upload_logs:
            self._copy_logs(runner)

    def _upload_last(self, runner) -> bool:
        last = runner.message_hub.get_info('last_ckpt')
        if not last or not osp.isfile(last) or self._signature(last) == self._uploaded:
            return False
        # The same path again when its file changed: save_best saves epoch_N.pth a second
        # time after the validation, to record the new best score in it.
        signature = self._signature(last)
        name = osp.basename(last)
        self._retry(f'checkpoint {last}', lambda: self.store.put_file(last, name))
        self._retry(f'{POINTER} naming {name}',
                    lambda: self.store.put_bytes(name.encode(), POINTER))
        self._uploaded = signature
        print_log(f'Uploaded {name} to {self.store.url}', logger='current')
        self._prune(runner)
        return True

    @staticmethod
    def _signature(path: str) -> tuple:
        stat = os.stat(path)
        return path, stat.st_size, stat.st_mtime_ns

    def _upload_best(self, runner) -> bool:
        uploaded = False
        for key, path in list(runner.message_hub.runtime_info.items()):
            if (not key.startswith('best_ckpt') or not path or path == self._best.get(key)
                    or not osp.isfile(path)):
                continue
            self._retry(f'checkpoint {path}',
                        lambda: self.store.put_file(path, osp.basename(path)))
            previous = self._best.get(key)
            self._best[key] = path
            uploaded = True
            if previous and osp.basename(previous) != osp.basename(path):
                self._remove(osp.basename(previous))
        return uploaded

    def _prune(self, runner) -> None:
        """Delete the remote checkpoints that ``CheckpointHook``'s ``max_keep_ckpts`` dropped
        locally (called only after the new ``last_checkpoint`` is written)."""
        for hook in runner.hooks:
            if not isinstance(hook, CheckpointHook) or hook.max_keep_ckpts <= 0:
                continue
            prefix, _, suffix = hook.filename_tmpl.partition('{}')
            pattern = re.compile(re.escape(prefix) + r'\d+' + re.escape(suffix))
            kept = {hook.filename_tmpl.format(step) for step in hook.keep_ckpt_ids}
            try:
                names = self.store.names()
            except Exception as err:
                print_log(f'Cannot list {self.store.url} to delete old checkpoints: '
                          f'{describe(err)}', logger='current', level=30)
                return
            for name in names:
                if pattern.fullmatch(name) and name not in kept:
                    self._remove(name)

    def _remove(self, name: str) -> None:
        try:
            self.store.remove(name)
        except FileNotFoundError:
            pass
        except Exception as err:  # an old copy left behind costs space, not the run
            print_log(f'Cannot delete {self.store.url_of(name)}: {describe(err)}',
                      logger='current', level=30)

    def _copy_logs(self, runner) -> None:
        """Copy ``<work_dir>/<timestamp>/`` to ``<remote_dir>/<timestamp>/``."""
        log_dir = runner.log_dir
        for folder, _, files in os.walk(log_dir):
            for file in files:
                local = osp.join(folder, file)
                name = osp.relpath(local, osp.dirname(log_dir)).replace(os.sep, '/')
                try:
                    self.store.put_file(local, name)
                except Exception as err:
                    print_log(f'Cannot copy the log {local} to {self.store.url}: '
                              f'{describe(err)}; trying again after the next checkpoint',
                              logger='current', level=30)
                    return

    def _retry(self, what: str, action: Callable[[], None]) -> None:
        """Run ``action``; after ``retries`` failures stop the run in one line."""
        for attempt in range(self.retries):
            try:
                action()
                return
            except Exception as err:  # botocore/aiohttp errors are not all OSErrors
                error = err
                if attempt + 1 < self.retries:
                    wait = self.retry_wait * 2**attempt
                    print_log(f'Uploading {what} to {self.store.url} failed '
                              f'({describe(err)}); trying again in {wait:g} s',
                              logger='current', level=30)
                    time.sleep(wait)
        previous = osp.basename(self._uploaded[0]) if self._uploaded else None
        remote = (f'the remote {POINTER} still names {previous}' if previous else
                  f'no checkpoint of this run is in {self.store.url} yet')
        raise RunStopped(f'cannot upload {what} to {self.store.url} after {self.retries} '
                         f'tries ({describe(error)}); the local copy is intact and {remote}: '
                         f'fix the connection and continue with tools/train.py CONFIG --resume '
                         f'--remote-dir {self.store.url}')
