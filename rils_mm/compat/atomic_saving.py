"""Checkpoints that a kill at any moment cannot truncate or lose.

mmengine 0.10 writes a checkpoint by opening the target file and writing into it
(``LocalBackend.put``), and ``CheckpointHook`` deletes the oldest kept checkpoint *before* it
writes the new one. A kill during a save therefore leaves a truncated ``epoch_N.pth``, and with
``max_keep_ckpts=1`` nothing usable at all. Here local writes go to a temporary file in the
same folder that is flushed to disk and renamed over the target (a rename within a file system
is atomic), ``last_checkpoint`` is written the same way, and the oldest checkpoint is removed
only after the new one is in place.

A save that fails (a full disk, a quota, an I/O error) therefore loses nothing: the temporary
file is removed, the previous checkpoint and ``last_checkpoint`` are as they were, and the run
stops with a :class:`CheckpointSaveError` whose one-line message says so and names the
previous checkpoint (the tools add how they continue from it).

With ``save_best``, the best-so-far record (``best_score``/``best_ckpt`` in the message hub)
survives a resume: mmengine saves ``epoch_N.pth`` *before* epoch N's validation, so the record
resumed from it lags one validation behind; the best checkpoint file itself holds the up-to-date
record, and resuming takes the record from it (:func:`_restore_best_record`).
"""
import errno
import glob
import os
import os.path as osp
from pathlib import Path
from typing import Optional, Union

__all__ = ['atomic_write_bytes', 'PARTIAL_SUFFIX', 'install_atomic_checkpoints',
           'CheckpointSaveError']


class CheckpointSaveError(RuntimeError):
    """Saving a checkpoint failed; nothing already saved was changed (the message says what
    the previous checkpoint is and how to go on)."""

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
        _write_durably(partial, data)
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


def _write_durably(path: str, data: bytes) -> None:
    """Write ``data`` to a new file ``path`` and flush it to the disk."""
    with open(path, 'wb') as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())


def _save_failed(error: OSError, path: str, previous: Optional[str]) -> CheckpointSaveError:
    """The one-line error of a checkpoint save that raised ``error``."""
    code = f' ({errno.errorcode[error.errno]})' if error.errno in errno.errorcode else ''
    reason = f'{error.strerror or error}{code}'
    kept = (f'the previous checkpoint {previous} is intact' if previous and osp.isfile(previous)
            else 'no checkpoint of this run had been saved yet')
    return CheckpointSaveError(
        f'cannot save checkpoint {path}: {reason}; nothing was replaced and no partial file '
        f'was left; {kept}')


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
    previous = runner.message_hub.get_info('last_ckpt')  # also after a resume
    self.last_ckpt = self.file_backend.join_path(self.out_dir, ckpt_filename)
    runner.message_hub.update_info('last_ckpt', self.last_ckpt)
    try:
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
        atomic_write_bytes(str(self.last_ckpt).encode(),
                           osp.join(runner.work_dir, 'last_checkpoint'))
    except OSError as error:
        raise _save_failed(error, self.last_ckpt, previous) from error
    if expired is not None and expired != step:
        expired_path = self.file_backend.join_path(self.out_dir,
                                                   self.filename_tmpl.format(expired))
        if self.file_backend.isfile(expired_path):
            self.file_backend.remove(expired_path)
        elif self.file_backend.isdir(expired_path):  # DeepSpeed checkpoints are folders
            self.file_backend.rmtree(expired_path)


def _restore_best_record(self, runner, checkpoint: dict) -> None:
    """``CheckpointHook.after_load_checkpoint``: on resume, take the best-so-far score and
    file of each ``save_best`` metric from the ``best_<metric>_*.pth`` file in the work dir
    when it is better than the resumed checkpoint's record (which predates the validation of
    the checkpoint's own epoch)."""
    import torch
    if not getattr(runner, '_resume', False) or not getattr(self, 'key_indicators', None):
        return
    hub = runner.message_hub
    out_dir = self.out_dir or runner.work_dir
    single = len(self.key_indicators) == 1
    for indicator in self.key_indicators:
        better = getattr(self, 'is_better_than', {}).get(indicator)
        if better is None:  # save_best='auto': the rule is set at the first validation
            continue
        score_key = 'best_score' if single else f'best_score_{indicator}'
        ckpt_key = 'best_ckpt' if single else f'best_ckpt_{indicator}'
        pattern = f'best_{indicator}_'.replace('/', '_') + '*.pth'
        for path in sorted(glob.glob(osp.join(glob.escape(str(out_dir)), pattern))):
            saved = torch.load(path, map_location='cpu', weights_only=False, mmap=True)
            score = saved.get('message_hub', {}).get('runtime_info', {}).get(score_key)
            if score is None:
                continue
            current = hub.runtime_info.get(score_key)
            if current is None or better(score, current):
                hub.update_info(score_key, score)
                hub.update_info(ckpt_key, path)


def install_atomic_checkpoints() -> None:
    """Make mmengine's local file writes atomic and its checkpoint rotation save-first."""
    from mmengine.fileio.backends import LocalBackend
    from mmengine.hooks import CheckpointHook

    def put(self, obj: bytes, filepath) -> None:
        atomic_write_bytes(obj, filepath)

    put.__doc__ = LocalBackend.put.__doc__
    LocalBackend.put = put
    CheckpointHook._save_checkpoint_with_step = _save_checkpoint_with_step
    CheckpointHook.after_load_checkpoint = _restore_best_record
