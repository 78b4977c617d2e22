"""Training curves from mmengine's scalar logs (library side of
``tools/analysis_tools/plot_curves.py``).

mmengine's ``LocalVisBackend`` (``configs/_base_/default_runtime.py``) appends one JSON object
per logged step to ``<work_dir>/<timestamp>/vis_data/scalars.json``: the training entries
carry ``step`` (the iteration), ``iter``, ``epoch`` (by-epoch loops), ``lr``, every loss and
metric the model returns (``loss``, ``loss_contrastive``, ``i2t_acc``, ``logit_scale``, ...),
``time`` and ``data_time``; validation entries carry their metrics and ``step``, which is the
epoch when metrics are logged by epoch. Curves are drawn against the iteration: a validation
entry of epoch ``e`` is placed at the last training iteration of that epoch.

A run is given as the ``scalars.json`` file, a ``<timestamp>`` folder, or a work dir, in which
the newest ``<timestamp>/vis_data/scalars.json`` is taken (a resumed run logs into a new
timestamp folder: give both files to see the part before the resume as well).
"""
import glob
import json
import math
import os.path as osp
from typing import Dict, List, Optional, Sequence, Tuple

__all__ = ['CurvesError', 'FIGURE_SIZE', 'DPI', 'find_scalars_file', 'read_scalars',
           'available_keys', 'curve', 'run_name', 'plot_curves']

FIGURE_SIZE = (10, 6)  # inches; with DPI, every chart is 1000 x 600 pixels
DPI = 100
X_KEYS = ('step', 'iter', 'epoch')  # position fields, not curves


class CurvesError(ValueError):
    """A run or key that cannot be plotted; the message is one line naming it."""


def find_scalars_file(path: str) -> str:
    """The ``scalars.json`` of a run: ``path`` itself, ``path/vis_data/scalars.json`` (a
    timestamp folder), or the newest ``path/<timestamp>/vis_data/scalars.json`` (a work dir).

    Raises:
        CurvesError: ``path`` does not exist or holds no scalar log.
    """
    if osp.isfile(path):
        return path
    if not osp.isdir(path):
        raise CurvesError(f'no such file or run directory: {path}')
    direct = osp.join(path, 'vis_data', 'scalars.json')
    if osp.isfile(direct):
        return direct
    # mmengine names the folders by start time (YYYYMMDD_HHMMSS): the largest is the newest.
    found = sorted(glob.glob(osp.join(glob.escape(path), '*', 'vis_data', 'scalars.json')))
    if not found:
        raise CurvesError(f'no scalar log in {path}: expected {path}/<timestamp>/vis_data/'
                          f'scalars.json (written by mmengine\'s LocalVisBackend)')
    return found[-1]


def read_scalars(path: str) -> List[dict]:
    """The logged entries of a ``scalars.json`` (JSON lines), in file order.

    Raises:
        CurvesError: A line is not a JSON object (naming the file and line), or the file is
            empty.
    """
    records = []
    with open(path, encoding='utf-8') as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise CurvesError(f'{path}:{number}: not a JSON line ({err.msg})') from None
            if not isinstance(record, dict):
                raise CurvesError(f'{path}:{number}: expected a JSON object per line')
            records.append(record)
    if not records:
        raise CurvesError(f'{path} holds no logged step yet')
    return records


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def available_keys(records: Sequence[dict]) -> List[str]:
    """The numeric keys logged in ``records`` (position fields excluded), sorted."""
    return sorted({key for record in records for key, value in record.items()
                   if _is_number(value) and key not in X_KEYS})


def _iteration(record: dict, last_iter_of_epoch: Dict[int, int]) -> Optional[float]:
    """The training iteration at which ``record`` was logged."""
    if _is_number(record.get('iter')):
        return record['iter']
    step = record.get('step')
    if not _is_number(step):
        return None
    # A validation entry of a by-epoch run: its step is the epoch.
    return last_iter_of_epoch.get(step, step) if last_iter_of_epoch else step


def curve(records: Sequence[dict], key: str) -> Tuple[List[float], List[float]]:
    """``(iterations, values)`` of ``key``, in logging order; non-finite values are kept
    (drawn as gaps), non-numeric ones skipped."""
    last_iter_of_epoch: Dict[int, int] = {}
    for record in records:
        if _is_number(record.get('iter')) and _is_number(record.get('epoch')):
            epoch = record['epoch']
            last_iter_of_epoch[epoch] = max(last_iter_of_epoch.get(epoch, 0), record['iter'])
    xs, ys = [], []
    for record in records:
        value = record.get(key)
        x = _iteration(record, last_iter_of_epoch)
        if _is_number(value) and x is not None:
            xs.append(x)
            ys.append(float(value))
    return xs, ys


def run_name(path: str) -> str:
    """A legend entry for a run: its work dir's name (for a file, the folder above
    ``<timestamp>/vis_data/``)."""
    path = osp.normpath(osp.abspath(path))
    if osp.isfile(path):
        parts = path.split(osp.sep)
        if len(parts) >= 4 and parts[-2] == 'vis_data':
            return parts[-4]
        return osp.splitext(osp.basename(path))[0]
    if osp.isfile(osp.join(path, 'vis_data', 'scalars.json')):  # a timestamp folder
        return osp.basename(osp.dirname(path))
    return osp.basename(path)


def plot_curves(runs: Sequence[str],
                keys: Sequence[str] = ('loss', ),
                legend: Optional[Sequence[str]] = None,
                out: str = 'curves.png',
                title: Optional[str] = None) -> str:
    """Draw ``keys`` of one or several runs against the iteration into one PNG.

    One panel per key (two columns when there are several), one line per run, the same colour
    for a run in every panel. A key a run did not log is left out of that run's lines; a key
    no run logged is an error. The figure is always :data:`FIGURE_SIZE` at :data:`DPI`
    (1000 x 600 pixels).

    Args:
        runs (Sequence[str]): ``scalars.json`` files, timestamp folders or work dirs.
        keys (Sequence[str]): Logged keys, e.g. ``('loss', 'lr')``.
        legend (Sequence[str], optional): One name per run (default: the work dirs' names).
        out (str): The PNG to write.
        title (str, optional): The figure's title.

    Returns:
        str: ``out``.

    Raises:
        CurvesError: A run has no scalar log, a key is logged by none of the runs (the message
            names the keys that are), or ``legend`` does not have one name per run.
    """
    if not runs:
        raise CurvesError('no run given')
    if not keys:
        raise CurvesError('no key given')
    if legend is not None and len(legend) != len(runs):
        raise CurvesError(f'--legend has {len(legend)} names for {len(runs)} runs')
    files = [find_scalars_file(run) for run in runs]
    records = [read_scalars(file) for file in files]
    names = list(legend) if legend is not None else [run_name(run) for run in runs]
    logged = [set(available_keys(r)) for r in records]
    for key in keys:
        if not any(key in keys_of_run for keys_of_run in logged):
            where = files[0] if len(files) == 1 else f'any of the {len(files)} runs'
            known = sorted(set().union(*logged))
            raise CurvesError(f'key "{key}" is not logged in {where}; logged keys: '
                              f'{", ".join(known)}')

    # A Figure on its own Agg canvas: no pyplot, so the caller's matplotlib backend is left as
    # it is (a notebook keeps its own).
    from matplotlib import rcParams
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    columns = 1 if len(keys) == 1 else 2
    rows = math.ceil(len(keys) / columns)
    fig = Figure(figsize=FIGURE_SIZE, dpi=DPI)
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, columns, squeeze=False)
    colours = rcParams['axes.prop_cycle'].by_key()['color']
    for index, key in enumerate(keys):
        ax = axes[index // columns][index % columns]
        for run_index, (name, run_records) in enumerate(zip(names, records)):
            xs, ys = curve(run_records, key)
            if xs:
                ax.plot(xs, ys, label=name, linewidth=1.2,
                        marker='.' if len(xs) < 30 else None,
                        color=colours[run_index % len(colours)])
        ax.set_title(key, fontsize=10)
        ax.set_xlabel('iteration', fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        if len(runs) > 1 or legend is not None:
            ax.legend(fontsize=8)
    for index in range(len(keys), rows * columns):
        axes[index // columns][index % columns].axis('off')
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(out, dpi=DPI)
    return out
