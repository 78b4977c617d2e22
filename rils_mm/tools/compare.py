"""The demo-scale comparison of the image-text pretraining methods (``tools/compare.py``).

Every method trains on the demo data with the same budget (``epochs`` passes over the training
pairs; a two-stage chain splits them between its stages) for each seed, and every encoder is
evaluated the same way from its final checkpoint:

- zero-shot top-1 among all colour-shape classes, on held-out (never captioned in training)
  and seen combinations, with the prompt-ensembled class embeddings of the demo's templates
  (methods with a text tower);
- image<->text retrieval R@1 / R@5 on the held-out split (methods with a text tower); many
  held-out images share a word-for-word identical caption (same colour, shape, size and
  position), so any caption (image) whose text is identical to the true one counts as a hit;
- for captioning models (MaMMUT), greedy captions of the held-out images: exact match and
  CIDEr-D against their captions (held-out colour-shape combinations, never captioned in
  training);
- a linear probe on frozen features (the mean of the encoder's patch tokens) over the
  colour-shape classes: trained on the first ``probe_train`` training pairs, tested on the
  seen-combination split; and the same probe from 1, 2 and 10 images per class.

Each run records its training in ``<work_dir>/<method>/seed<seed>/train.json`` and its metrics
in ``metrics.json``; a rerun reuses them when the budget, overrides, evaluation settings and
the code that trains and evaluates (:func:`code_fingerprint`) match. The table (mean and half-range over seeds) goes to ``results.md``, the chart to
``results.png``, the training curves of the first seed's runs to ``curves.png``.
"""
import hashlib
import json
import os
import os.path as osp
import tarfile
import time
from io import BytesIO
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope
from PIL import Image

from ..datasets.demo_shapes import read_demo_meta
from ..datasets.resources import load_templates, read_lines
from ..datasets.transforms.tokenize import get_clip_tokenizer
from ..evaluation.caption_metrics import caption_scores
from ..evaluation.probes import (caption_recall, few_shot_probe, linear_probe,
                                 zero_shot_accuracy)
from ..models.backbones.rils_vit import intact_outputs
from ..models.utils.checkpoint_loading import load_checked
from ..models.utils.zero_shot_weights import build_text_classifier
from ..utils.methods import MethodTableError, load_method_table
from .chain import load_chain, read_json, run_chain, write_json
from .cli import UsageError, train_main

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def methods_from_table() -> Dict[str, dict]:
    """The comparison's runs, in the order of the method table (``configs/methods.yml``):
    name -> its demo ``config`` or the ``chain`` config of a two-stage pipeline and, for runs
    built on other runs of the same seed (whose training time is not counted again), the
    ``sources``: each hands its final checkpoint to the config through ``option``.

    Raises:
        UsageError: The table is malformed (one line naming the entry).
    """
    try:
        runs = load_method_table().compare
    except MethodTableError as error:
        raise UsageError(str(error)) from None
    methods = {}
    for run in runs:
        spec = dict(config=run.config) if run.chain is None else dict(chain=run.chain)
        if run.sources is not None:
            spec['sources'] = [dict(method=method, option=option)
                               for method, option in run.sources]
        methods[run.name] = spec
    return methods


METHODS = methods_from_table()
EVAL_VERSION = 2  # bump when the evaluation changes, so reruns re-evaluate
# What a run's figures depend on besides its settings: the package, the configs and the
# comparison's own entry point.
FINGERPRINTED = ('rils_mm', 'configs', osp.join('tools', 'compare.py'))
FINGERPRINTED_PACKAGES = ('torch', 'mmengine', 'mmcv', 'mmpretrain', 'open_clip_torch')
COLUMNS = [('zs_heldout', 'zero-shot held-out'), ('zs_seen', 'zero-shot seen'),
           ('i2t_r1', 'I2T R@1'), ('i2t_r5', 'I2T R@5'), ('t2i_r1', 'T2I R@1'),
           ('t2i_r5', 'T2I R@5'), ('linear', 'linear probe'), ('shot1', '1-shot'),
           ('shot2', '2-shot'), ('shot10', '10-shot'), ('cap_exact', 'caption exact'),
           ('cap_cider', 'caption CIDEr')]


def schedule_options(epochs: int, iters_per_epoch: int) -> List[str]:
    """Overrides that give a demo config ``epochs`` epochs: one warm-up epoch then cosine, as
    the demo schedule; a one-epoch run warms up over its first quarter instead."""
    options = [f'train_cfg.max_epochs={epochs}', f'default_hooks.checkpoint.interval={epochs}']
    if epochs > 1:
        return options + [f'param_scheduler.1.T_max={epochs - 1}',
                          f'param_scheduler.1.end={epochs}']
    warm = max(1, iters_per_epoch // 4)
    return options + [
        'param_scheduler.0.by_epoch=False', 'param_scheduler.0.convert_to_iter_based=False',
        'param_scheduler.0.begin=0', f'param_scheduler.0.end={warm}',
        'param_scheduler.1.by_epoch=False', 'param_scheduler.1.convert_to_iter_based=False',
        f'param_scheduler.1.begin={warm}', f'param_scheduler.1.end={iters_per_epoch}',
        f'param_scheduler.1.T_max={max(1, iters_per_epoch - warm)}']


def iters_per_epoch(config: str, options: Sequence[str]) -> int:
    """Iterations of one epoch of a demo config under ``key=value`` overrides."""
    cfg = Config.fromfile(config)
    values = dict(option.split('=', 1) for option in options)
    samples = int(values.get('train_dataloader.dataset.samples_per_epoch',
                             cfg.train_dataloader.dataset.samples_per_epoch))
    batch = int(values.get('train_dataloader.batch_size', cfg.train_dataloader.batch_size))
    return max(1, samples // batch)


def split_budget(epochs: int, num_stages: int) -> List[int]:
    """Epochs per stage of a chain: as equal as possible, the later stages taking the rest."""
    if epochs < num_stages:
        raise ValueError(f'a chain of {num_stages} stages needs a budget of at least '
                         f'{num_stages} epochs, got {epochs}')
    base = epochs // num_stages
    return [base + (1 if i >= num_stages - epochs % num_stages else 0)
            for i in range(num_stages)]


def code_fingerprint(root: str = REPO, paths: Sequence[str] = FINGERPRINTED) -> str:
    """A digest of the code a comparison run depends on: every ``.py``/``.yml``/``.json`` file
    under ``paths`` (relative to ``root``; names and contents) and the installed versions of
    :data:`FINGERPRINTED_PACKAGES`. A run record is reused only while this is unchanged, so a
    table never mixes rows of different code. Coarse on purpose: any change to the package
    retrains every run rather than guessing which runs it could not affect."""
    from importlib.metadata import PackageNotFoundError, version
    digest = hashlib.sha256()
    files = []
    for path in paths:
        full = osp.join(root, path)
        if osp.isfile(full):
            files.append(full)
        for folder, dirs, names in os.walk(full):
            dirs[:] = sorted(d for d in dirs if d != '__pycache__')
            files += [osp.join(folder, n) for n in names
                      if n.endswith(('.py', '.yml', '.json'))]
    for file in sorted(files):
        digest.update(osp.relpath(file, root).encode() + b'\0')
        with open(file, 'rb') as f:
            digest.update(hashlib.sha256(f.read()).digest())
    for package in FINGERPRINTED_PACKAGES:
        try:
            digest.update(f'{package}=={version(package)}'.encode())
        except PackageNotFoundError:
            digest.update(f'{package} missing'.encode())
    return digest.hexdigest()[:16]


def train_method(method: str, run_dir: str, seed: int, epochs: int,
                 extra_options: Sequence[str] = ()) -> str:
    """Train one method for one seed; returns the final checkpoint."""
    spec = METHODS[method]
    options = [f'randomness.seed={seed}', *extra_options]
    if 'config' in spec:
        config = osp.join(REPO, spec['config'])
        train_main([config, '--work-dir', run_dir, '--overwrite', '--cfg-options', *options,
                    *schedule_options(epochs, iters_per_epoch(config, options))])
        with open(osp.join(run_dir, 'last_checkpoint')) as f:
            return f.read().strip()
    chain = load_chain(osp.join(REPO, spec['chain']))
    budget = split_budget(epochs, len(chain.stages))
    stage_options = {
        stage['name']: schedule_options(stage_epochs, iters_per_epoch(stage['config'], options))
        for stage, stage_epochs in zip(chain.stages, budget)}
    return run_chain(osp.join(REPO, spec['chain']), work_dir=run_dir, cfg_options=options,
                     stage_options=stage_options, overwrite=True)[-1]


def _read_jsonl(path: str) -> List[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _image_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image.convert('RGB'), dtype=np.uint8).copy()
                            ).permute(2, 0, 1)


def load_eval_data(data_root: str, probe_train: int) -> dict:
    """Images (uint8, N x 3 x H x W), captions and labels of the evaluation splits."""
    data = {}
    for split in ('heldout', 'val'):
        records = _read_jsonl(osp.join(data_root, f'{split}.jsonl'))
        data[split] = dict(
            images=torch.stack([_image_tensor(Image.open(osp.join(data_root, split,
                                                                    r['filepath'])))
                                for r in records]),
            captions=[r['caption'] for r in records],
            labels=torch.tensor([r['label'] for r in records]))
    # The probe's training images: the first pairs of the training shards, in shard order.
    shards = read_demo_meta(data_root)['train_shards']
    samples: Dict[str, dict] = {}
    for shard in shards:
        with tarfile.open(osp.join(data_root, 'train', shard)) as tar:
            for member in tar.getmembers():
                key, ext = member.name.rsplit('.', 1)
                samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
        if len(samples) >= probe_train:
            break
    keys = sorted(samples)[:probe_train]
    data['train'] = dict(
        images=torch.stack([_image_tensor(Image.open(BytesIO(samples[k]['jpg'])))
                            for k in keys]),
        labels=torch.tensor([json.loads(samples[k]['json'])['label'] for k in keys]))
    data['classnames'] = read_lines(osp.join(data_root, 'classnames.txt'))
    data['templates'] = load_templates(osp.join(data_root, 'templates.txt'))
    return data


def build_trained_model(config: str, checkpoint: str, options: Sequence[str] = ()):
    """The method's model with every weight of ``checkpoint`` (checked loading), in eval mode.

    ``options`` are ``key=value`` overrides of the config (a teacher's file, for one).
    """
    from mmengine.config import DictAction
    from mmpretrain.registry import MODELS
    cfg = Config.fromfile(config)
    # Parsed as the command line's --cfg-options are.
    cfg.merge_from_dict({key: DictAction._parse_iterable(value)
                         for key, value in (option.split('=', 1) for option in options)})
    init_default_scope('mmpretrain')
    model = MODELS.build(cfg.model)
    load_checked(model, checkpoint, prefix='', logger=None)
    return model.eval()


@torch.no_grad()
def encode(model, images: torch.Tensor, batch_size: int = 128) -> dict:
    """Pooled encoder features (B x C) and, with a text tower, joint embeddings (B x D)."""
    features, embeddings = [], []
    for start in range(0, len(images), batch_size):
        batch = model.data_preprocessor(
            dict(inputs=images[start:start + batch_size]), False)['inputs']
        tokens = intact_outputs(model.backbone, batch)[-1]
        features.append(tokens[:, 1:].mean(dim=1))
        if hasattr(model, 'embed_image_tokens'):
            embeddings.append(model.embed_image_tokens(tokens))
    return dict(features=torch.cat(features),
                embeddings=torch.cat(embeddings) if embeddings else None)


@torch.no_grad()
def evaluate(model, data: dict, seed: int, shots: Sequence[int] = (1, 2, 10)) -> dict:
    """All the comparison's metrics of one trained model (see the module docstring)."""
    num_classes = len(data['classnames'])
    encoded = {split: encode(model, data[split]['images']) for split in ('train', 'val',
                                                                           'heldout')}
    probe = (encoded['train']['features'], data['train']['labels'],
             encoded['val']['features'], data['val']['labels'], num_classes)
    metrics = dict(linear=linear_probe(*probe))
    for k in shots:
        accuracy = few_shot_probe(*probe, k=k, seed=seed)
        if accuracy is not None:
            metrics[f'shot{k}'] = accuracy
    if hasattr(model, 'encode_text'):
        tokenizer = get_clip_tokenizer()
        classifier = build_text_classifier(model.encode_text, tokenizer, data['classnames'],
                                           data['templates'], torch.device('cpu'))
        for split, name in (('heldout', 'zs_heldout'), ('val', 'zs_seen')):
            metrics[name] = zero_shot_accuracy(encoded[split]['embeddings'], classifier,
                                               data[split]['labels'])
        captions = data['heldout']['captions']
        texts = torch.cat([model.encode_text(tokenizer(captions[i:i + 128]))
                           for i in range(0, len(captions), 128)])
        metrics.update(caption_recall(encoded['heldout']['embeddings'], texts, captions))
    if hasattr(model, 'generate'):  # captioning: greedy captions of the held-out images
        tokenizer = get_clip_tokenizer()
        generated = []
        for start in range(0, len(data['heldout']['images']), 128):
            batch = model.data_preprocessor(
                dict(inputs=data['heldout']['images'][start:start + 128]), False)['inputs']
            generated += [tokenizer.decode(ids).strip() for ids in model.generate(batch)]
        scores = caption_scores(generated, [[c] for c in data['heldout']['captions']])
        metrics.update(cap_exact=scores['exact_match'], cap_cider=scores['cider'],
                       cap_bleu4=scores['bleu4'], cap_examples=generated[:5])
    return metrics


def summarise(results: Dict[str, List[dict]]) -> str:
    """Markdown table: mean and half-range over seeds per method and metric."""
    header = '| method | seeds | train s | ' + ' | '.join(t for _, t in COLUMNS) + ' |'
    lines = [header, '|' + '---|' * (len(COLUMNS) + 3)]
    for method, runs in results.items():
        cells = [method, str(len(runs)), f'{np.mean([r["train_s"] for r in runs]):.0f}']
        for key, _ in COLUMNS:
            values = [r[key] for r in runs if key in r]
            if not values:
                cells.append('-')
            elif len(values) == 1:
                cells.append(f'{values[0]:.1f}')
            else:
                half_range = (max(values) - min(values)) / 2
                cells.append(f'{np.mean(values):.1f} ± {half_range:.1f}')
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def plot(results: Dict[str, List[dict]], path: str) -> None:
    """Grouped bars (mean over seeds, error bars = range) of the main metrics."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    keys = [('zs_heldout', 'zero-shot\nheld-out'), ('zs_seen', 'zero-shot\nseen'),
            ('i2t_r1', 'I2T R@1'), ('linear', 'linear\nprobe'), ('shot10', '10-shot')]
    methods = list(results)
    width = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(10, 4.2), dpi=100)
    for i, method in enumerate(methods):
        means, lows, highs = [], [], []
        for key, _ in keys:
            values = [r[key] for r in results[method] if key in r] or [0.0]
            means.append(np.mean(values))
            lows.append(np.mean(values) - min(values))
            highs.append(max(values) - np.mean(values))
        positions = np.arange(len(keys)) + (i - (len(methods) - 1) / 2) * width
        ax.bar(positions, means, width, yerr=[lows, highs], capsize=2, label=method)
    ax.set_xticks(np.arange(len(keys)))
    ax.set_xticklabels([label for _, label in keys])
    ax.set_ylabel('%')
    ax.set_title('Demo-scale comparison (mean over seeds; bars show the range)')
    ax.legend(fontsize=8, ncol=4)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


CURVE_KEYS = ('loss', 'loss_contrastive')


def plot_training_curves(work_dir: str, methods: Sequence[str], seed: int, path: str,
                         keys: Sequence[str] = CURVE_KEYS) -> List[str]:
    """Training curves (:data:`CURVE_KEYS` that some run logged) of each method's run of
    ``seed`` (a chain: its last stage), from the runs' ``scalars.json``; returns the methods
    drawn (those without a log are left out; none: no chart)."""
    from .plot_curves import (CurvesError, available_keys, find_scalars_file,
                                     plot_curves, read_scalars)
    runs, names, logged = [], [], set()
    for method in methods:
        run_dir = method_run_dir(work_dir, method, seed)
        if 'chain' in METHODS[method]:
            last = load_chain(osp.join(REPO, METHODS[method]['chain'])).stages[-1]['name']
            run_dir = osp.join(run_dir, last)
        try:
            logged.update(available_keys(read_scalars(find_scalars_file(run_dir))))
        except CurvesError:
            continue
        runs.append(run_dir)
        names.append(method)
    if runs:
        plot_curves(runs, [k for k in keys if k in logged] or ['loss'], names, path,
                    title=f'Training curves (seed {seed})')
    return names


def method_run_dir(work_dir: str, method: str, seed: int) -> str:
    """Where the comparison trains ``method`` for ``seed``: ``<work_dir>/<name>/seed<seed>``,
    the name without spaces, ``,``, ``>`` and ``+`` (``MIM->CLIP`` is ``MIM-CLIP``)."""
    name = method.replace(' ', '').replace(',', '_').replace('>', '').replace('+', '_')
    return osp.join(work_dir, name, f'seed{seed}')


def _source_options(method: str, trained: dict) -> List[str]:
    """The overrides that hand a method the checkpoints of the runs it builds on."""
    return [f'{source["option"]}={checkpoint}' for source, checkpoint in
            zip(METHODS[method].get('sources', ()), trained.get('sources', ()))]


def _training_settings(work_dir: str, method: str, seed: int, epochs: int,
                       extra_options: Sequence[str], log) -> dict:
    """What a run's training depends on; the runs a method builds on are trained (or reused)
    first, and their checkpoints are part of the settings."""
    trained = dict(epochs=epochs, options=list(extra_options), seed=seed,
                   code=code_fingerprint())
    sources = METHODS[method].get('sources')
    if sources:
        trained['sources'] = [
            _train_or_reuse(work_dir, source['method'], seed, _training_settings(
                work_dir, source['method'], seed, epochs, extra_options, log),
                log)['checkpoint'] for source in sources]
    return trained


def _train_or_reuse(work_dir: str, method: str, seed: int, trained: dict, log,
                    label: Optional[str] = None) -> dict:
    """The run's ``train.json`` record, training first unless a matching one exists; ``label``
    starts the log lines (default ``compare: METHOD seed SEED``)."""
    label = label or f'compare: {method} seed {seed}'
    run_dir = method_run_dir(work_dir, method, seed)
    record = read_json(osp.join(run_dir, 'train.json'))
    if record and all(record.get(k) == v for k, v in trained.items()) and \
            osp.isfile(record['checkpoint']):
        log(f'{label}: reused the training in {run_dir}')
        return record
    log(f'{label}: training in {run_dir}')
    start = time.time()
    options = [*trained['options'], *_source_options(method, trained)]
    checkpoint = train_method(method, run_dir, seed, trained['epochs'], options)
    record = dict(trained, checkpoint=checkpoint, train_s=time.time() - start)
    write_json(osp.join(run_dir, 'train.json'), record)
    return record


def run_comparison(work_dir: str,
                   methods: Sequence[str] = tuple(METHODS),
                   seeds: Sequence[int] = (0, 1),
                   epochs: int = 3,
                   data_root: str = 'data/demo_shapes',
                   probe_train: int = 2048,
                   shots: Sequence[int] = (1, 2, 10),
                   extra_options: Sequence[str] = (),
                   log=print) -> Dict[str, List[dict]]:
    """Train and evaluate every method for every seed; write the table and the chart.

    Args:
        work_dir (str): Where runs, ``results.md``, ``results.json`` and ``results.png`` go.
        methods (Sequence[str]): Names from :data:`METHODS` (the method table's runs).
        seeds (Sequence[int]): Seeds; each method trains once per seed.
        epochs (int): The budget: epochs per method (chains split them between stages).
        data_root (str): The demo data (generated on first use by the training).
        probe_train (int): Training pairs of the linear probe.
        shots (Sequence[int]): Images per class of the few-shot probes.
        extra_options (Sequence[str]): ``key=value`` overrides for every training run.
        log (Callable): Progress output.

    Returns:
        dict: Method -> list of per-seed metric dicts.
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f'unknown methods {unknown}; known: {list(METHODS)}')
    results: Dict[str, List[dict]] = {}
    data: Optional[dict] = None
    settings = dict(probe_train=probe_train, shots=list(shots), data_root=data_root,
                    eval_version=EVAL_VERSION)
    runs = len(methods) * len(seeds)
    number = 0
    for method in methods:
        results[method] = []
        for seed in seeds:
            number += 1
            run = f'compare: [{number}/{runs}] {method} seed {seed}'
            run_dir = method_run_dir(work_dir, method, seed)
            trained = _training_settings(work_dir, method, seed, epochs, extra_options, log)
            metrics = read_json(osp.join(run_dir, 'metrics.json'))
            if metrics and metrics.get('settings') == settings and all(
                    metrics.get(k) == v for k, v in trained.items()):
                results[method].append(metrics)
                log(f'{run}: reused {run_dir}/metrics.json')
                continue
            record = _train_or_reuse(work_dir, method, seed, trained, log, run)
            if data is None:
                data = load_eval_data(data_root, probe_train)
            spec = METHODS[method]
            config = (osp.join(REPO, spec['config']) if 'config' in spec else
                      load_chain(osp.join(REPO, spec['chain'])).stages[-1]['config'])
            start = time.time()
            model = build_trained_model(config, record['checkpoint'],
                                        _source_options(method, record))
            metrics = dict(evaluate(model, data, seed, shots), **record, settings=settings)
            metrics['eval_s'] = time.time() - start
            write_json(osp.join(run_dir, 'metrics.json'), metrics)
            results[method].append(metrics)
            log(f'{run}: {metrics["train_s"]:.0f} s training, '
                f'{metrics["eval_s"]:.0f} s evaluation, ' + ', '.join(
                    f'{k} {metrics[k]:.1f}' for k, _ in COLUMNS if k in metrics))
    with open(osp.join(work_dir, 'results.json'), 'w') as f:
        json.dump(results, f, indent=1)
    table = summarise(results)
    with open(osp.join(work_dir, 'results.md'), 'w') as f:
        f.write(table + '\n')
    plot(results, osp.join(work_dir, 'results.png'))
    plot_training_curves(work_dir, methods, seeds[0], osp.join(work_dir, 'curves.png'))
    return results

