"""Checkpoints that a kill at any moment cannot truncate or lose.

mmengine 0.10 writes a checkpoint by opening the target file and writing into it
(``LocalBackend.put``), and ``CheckpointHook`` deletes the oldest kept checkpoint *before* it
writes the new one. A kill during a save therefore leaves a truncated ``epoch_N.pth``, and with
``max_keep_ckpts=1`` nothing usable at all. Here local writes go to a temporary file in the
same folder that is flushed to disk and renamed over the target (a rename within a file system
is atomic), ``last_checkpoint`` is written the same way, and the oldest checkpoint is removed
only after the new one is in place.
"""
import os
import os.path as osp
from pathlib import Path
from typing import Union

__all__ = ['atomic_write_bytes', 'PARTIAL_SUFFIX', 'install_atomic_checkpoints']

# Temporary files end in ``<PARTIAL_SUFFIX><pid>``; a kill can leave one behind, never a
# truncated file under the real name.
PARTIAL_SUFFIX = '.partial-'


def atomic_write_bytes(data: bytes, path: Union[str, Path]) -> None:
    """Write ``data`` to ``path`` so that ``path`` is either the old or the new file.

    Raises:
        OSError: The write failed (a full disk, say); ``filename`` is ``path``, and the
            temporary file is removed.
    """
    path = str(path)
    folder = osp.dirname(osp.abspath(path))
    os.makedirs(folder, exist_ok=True)
    partial = f'{path}{PARTIAL_SUFFIX}{os.getpid()}'
    try:
        with open(partial, 'wb') as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(partial, path)
    except OSError as error:
        if error.filename is not None or error.errno is None:
            raise
        # A full disk fails the write with no file name: name the file being written.
        raise OSError(error.errno, error.strerror, path) from None
    finally:
        if osp.exists(partial):
            os.remove(partial)
    try:  # make the rename itself durable
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def _save_checkpoint_with_step(self, runner, step, meta):
    """``CheckpointHook._save_checkpoint_with_step`` that removes old files after saving."""
    from mmengine.dist import is_main_process
    expired = None
    if self.max_keep_ckpts > 0 and not (self.keep_ckpt_ids and self.keep_ckpt_ids[-1] == step):
        if len(self.keep_ckpt_ids) == self.max_keep_ckpts:
            expired = self.keep_ckpt_ids.popleft()
        self.keep_ckpt_ids.append(step)
        runner.message_hub.update_info('keep_ckpt_ids', list(self.keep_ckpt_ids))

    ckpt_filename = self.filename_tmpl.format(step)
    self.last_ckpt = self.file_backend.join_path(self.out_dir, ckpt_filename)
    runner.message_hub.update_info('last_ckpt', self.last_ckpt)
    runner.save_checkpoint(
        self.out_dir,
        ckpt_filename,
        self.file_client_args,
        save_optimizer=self.save_optimizer,
        save_param_scheduler=self.save_param_scheduler,
        meta=meta,
        by_epoch=self.by_epoch,
        backend_args=self.backend_args,
        **self.args)
    if not is_main_process():
        return
    atomic_write_bytes(str(self.last_ckpt).encode(), osp.join(runner.work_dir, 'last_checkpoint'))
    if expired is not None and expired != step:
        expired_path = self.file_backend.join_path(self.out_dir,
                                                   self.filename_tmpl.format(expired))
        if self.file_backend.isfile(expired_path):
            self.file_backend.remove(expired_path)
        elif self.file_backend.isdir(expired_path):  # DeepSpeed checkpoints are folders
            self.file_backend.rmtree(expired_path)


def install_atomic_checkpoints() -> None:
    """Make mmengine's local file writes atomic and its checkpoint rotation save-first."""
    from mmengine.fileio.backends import LocalBackend
    from mmengine.hooks import CheckpointHook

    def put(self, obj: bytes, filepath) -> None:
        atomic_write_bytes(obj, filepath)

    put.__doc__ = LocalBackend.put.__doc__
    LocalBackend.put = put
    CheckpointHook._save_checkpoint_with_step = _save_checkpoint_with_step
