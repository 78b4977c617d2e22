"""A run's checkpoints and logs on an object store, and ``--resume`` from there on a new node.

Cluster nodes are often wiped when a job ends. With a remote dir (an fsspec URL such as
``s3://bucket/run``), :class:`rils_mm.engine.hooks.RemoteCheckpointHook` copies every
checkpoint, the remote ``last_checkpoint`` and the log folder there, and ``tools/train.py
--resume`` on a node whose work dir is empty downloads the checkpoint the remote
``last_checkpoint`` names and resumes from it exactly as from a local one.

Guarantees:

- A checkpoint is uploaded whole before the remote ``last_checkpoint`` names it, so a kill
  during an upload leaves ``last_checkpoint`` naming the previous, complete checkpoint. On S3
  (and GCS) an object, single PUT or multipart upload, becomes visible only when complete
  (https://docs.aws.amazon.com/AmazonS3/latest/userguide/mpuoverview.html); on other file
  systems the file goes to a temporary name and is moved into place.
- The remote ``last_checkpoint`` holds a file name relative to the remote dir (a local path
  would mean nothing on another node).
- A download goes to a temporary file that is checked (zip CRCs) before it is renamed into
  the work dir; processes of one node that resume together download once (a ``flock``).
- Credentials come only from the environment (for S3 the botocore chain:
  ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, ``AWS_ENDPOINT_URL`` for a
  non-AWS endpoint). Storage options or a URL that carry a secret are refused without
  echoing it, so none reaches the dumped config or the logs.

Every failure is a :class:`RemoteStoreError`: one line naming the URL and what to do. The
store itself (uploads, downloads, the secret checks) is :mod:`rils_mm.engine.remote_store`,
which the hook uses too.
"""
import fcntl
import os
import os.path as osp
import re
import time
from contextlib import contextmanager
from typing import Callable, Iterator, Optional, Tuple

from rils_mm.compat.atomic_saving import atomic_write_bytes
from rils_mm.engine.remote_store import HOOK_TYPE, POINTER, RemoteStore, RemoteStoreError

__all__ = ['DOWNLOAD_LOCK', 'checkpoint_step', 'fetch_resume_checkpoint', 'prepare_remote_dir',
           'remote_hook_configs']

DOWNLOAD_LOCK = 'remote-download.lock'


def remote_hook_configs(cfg) -> list:
    """The ``RemoteCheckpointHook`` entries of ``cfg.custom_hooks``."""
    return [hook for hook in cfg.get('custom_hooks') or []
            if isinstance(hook, dict)
            and str(hook.get('type', '')).split('.')[-1] == HOOK_TYPE]


def prepare_remote_dir(cfg, remote_dir: Optional[str], resume: Optional[str],
                       overwrite: bool, check: bool = True) -> Optional[RemoteStore]:
    """Add (``--remote-dir``) or find the config's ``RemoteCheckpointHook`` and check its
    remote dir before anything is built; None when the run has no remote dir.

    ``--remote-dir`` replaces the ``remote_dir`` of a hook the config lists. Checks, each a
    :class:`RemoteStoreError`: no secrets in the URL or storage options, a known protocol
    with its package installed, the dir writable (on global rank 0, with ``check``), and a
    new run (no ``--resume``) not started over another run's remote checkpoints unless
    ``overwrite``.
    """
    from rils_mm.tools.work_dir_lock import global_rank
    hooks = remote_hook_configs(cfg)
    if remote_dir is not None:
        if hooks:
            hooks[0]['remote_dir'] = remote_dir
        else:
            cfg.custom_hooks = list(cfg.get('custom_hooks') or []) + [
                dict(type=f'mmpretrain.{HOOK_TYPE}', remote_dir=remote_dir)]
            hooks = remote_hook_configs(cfg)
    if not hooks:
        return None
    if len(hooks) > 1:
        raise RemoteStoreError(f'custom_hooks lists {HOOK_TYPE} {len(hooks)} times; one '
                               f'remote dir per run')
    if not hooks[0].get('remote_dir'):
        raise RemoteStoreError(f'custom_hooks: {HOOK_TYPE} needs remote_dir (an fsspec URL '
                               f'such as s3://bucket/run)')
    store = RemoteStore(hooks[0]['remote_dir'], hooks[0].get('storage_options'))
    if check and global_rank() == 0:
        store.check_writable()
        last = store.last_checkpoint()
        if resume is None and last is not None:
            if not overwrite:
                raise RemoteStoreError(
                    f'remote dir {store.url} holds the checkpoints of an earlier run '
                    f'(last_checkpoint names {last}): give --resume to continue it, another '
                    f'--remote-dir, or --overwrite to replace them')
            # The new run replaces the old one: a --resume before the new run's first save
            # must not continue the old run from its pointer.
            store.remove(POINTER)
    return store


def multi_node_launch() -> bool:
    """Whether this process belongs to a run over several nodes (torchrun's WORLD_SIZE above
    its LOCAL_WORLD_SIZE, or Slurm's SLURM_NNODES above 1)."""
    world, local = os.environ.get('WORLD_SIZE'), os.environ.get('LOCAL_WORLD_SIZE')
    if world and local and world.isdigit() and local.isdigit() and int(world) > int(local):
        return True
    nodes = os.environ.get('SLURM_NNODES', '')
    return nodes.isdigit() and int(nodes) > 1


def checkpoint_step(name: str) -> Optional[Tuple[str, int]]:
    """``('iter_', 12)`` for ``iter_12.pth``; None for a name without a trailing number."""
    match = re.fullmatch(r'(.*?)(\d+)\.pth', osp.basename(name))
    return (match.group(1), int(match.group(2))) if match else None


@contextmanager
def _node_lock(work_dir: str) -> Iterator[None]:
    """Held by one process of this node at a time (the processes of a torchrun start)."""
    from mmengine.logging import print_log
    os.makedirs(work_dir, exist_ok=True)
    with open(osp.join(work_dir, DOWNLOAD_LOCK), 'a') as file:
        try:
            fcntl.flock(file, fcntl.LOCK_EX)
        except OSError as err:  # e.g. Lustre mounted without flock: ENOSYS
            # Without a lock each process downloads to its own temporary name and renames it
            # into place: the same file, only more traffic.
            print_log(f'--resume: cannot lock {file.name} ({err.strerror or err}); each '
                      f'process of this node downloads the checkpoint itself',
                      logger='current', level=30)
            yield
            return
        try:
            yield
        finally:
            fcntl.flock(file, fcntl.LOCK_UN)


def fetch_resume_checkpoint(cfg, local: Optional[str],
                            verify: Callable[[str], None]) -> Optional[str]:
    """For ``--resume`` without a path: the checkpoint the remote ``last_checkpoint`` names,
    downloaded into the work dir, when it is newer than ``local`` (the work dir's newest good
    checkpoint, or None); else None (resume from ``local``).

    "Newer": ``local`` is None, or both names are ``<prefix><N>.pth`` with the same prefix and
    the remote N is larger. A local checkpoint of another kind is kept (a node that was not
    wiped knows best). The download happens once per node: other processes wait for the lock
    and find the file in place.
    """
    from mmengine.logging import print_log
    hooks = remote_hook_configs(cfg)
    if not hooks:
        return None
    store = RemoteStore(hooks[0]['remote_dir'], hooks[0].get('storage_options'))
    name = store.last_checkpoint()
    if name is None:
        return None
    if local is not None and multi_node_launch():
        # Only global rank 0 saves, so only its node has local checkpoints: every node takes
        # the remote one, or ranks would start from different steps.
        print_log(f'--resume: a run over several nodes resumes from the remote copy '
                  f'{store.url_of(name)}, not from {local} (the other nodes do not have it)',
                  logger='current', level=30)
    elif local is not None:
        remote_step, local_step = checkpoint_step(name), checkpoint_step(local)
        if not (remote_step and local_step and remote_step[0] == local_step[0]
                and remote_step[1] > local_step[1]):
            return None
    target = osp.join(cfg.work_dir, name)
    with _node_lock(cfg.work_dir):
        if osp.isfile(target):
            try:
                verify(target)
                return target  # another process of this node downloaded it
            except Exception:  # damaged: download it again
                pass
        start = time.monotonic()
        store.download(name, target, verify)
        atomic_write_bytes(osp.abspath(target).encode(), osp.join(cfg.work_dir, POINTER))
        print_log(f'--resume: downloaded {store.url_of(name)} (the remote last_checkpoint) to '
                  f'{target} in {time.monotonic() - start:.1f} s', logger='current')
    return target
