"""Gradient accumulation that keeps a batch-wide loss exact (GradCache).

Averaging the losses of K micro-batches (mmengine's ``accumulative_counts``) trains another
objective when the loss couples the samples of a batch: a micro-batch's images see only its
own captions as negatives, RILS's prototypes are a micro-batch's captions. GradCache (Gao et
al., "Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup", RepL4NLP 2021,
arXiv:2101.06983; github.com/luyug/GradCache) computes the whole batch's loss and gradient
while holding the activations of one micro-batch at a time:

1. every micro-batch is embedded without gradient, keeping what the batch-wide loss reads
   (the *representations*: image and text embeddings, projected predictions, masks);
2. the batch-wide loss is computed once on the concatenated representations, made leaves
   that require gradient, and differentiated with respect to them (and to the parameters the
   loss itself uses, such as the logit scale);
3. every micro-batch is embedded again, with gradient, from the same random state (masks,
   dropout and stochastic depth draw the same), and the kept gradients are back-propagated
   through it; parameter gradients sum in ``.grad``. Under DDP only the last micro-batch's
   backward all-reduces.

A loss that is a mean over per-sample items (MAE's pixels, MaMMUT's caption tokens) needs no
cache: each micro-batch back-propagates its own mean weighted by its share of the items.

A model takes part through three methods: ``embed(inputs) -> Embedded`` (one micro-batch),
``batch_losses(representations) -> dict`` (the batch-wide losses and metrics, from the
concatenated representations) and ``forward(..., mode='surrogate', **surrogate_kwargs)``,
which returns :func:`surrogate_loss` of its ``embed`` (so DDP's forward sees the recompute).
"""
from contextlib import nullcontext
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from mmengine.optim import AmpOptimWrapper, OptimWrapper
from torch import nn

__all__ = ['Embedded', 'accumulated_train_step', 'loss_multiplier', 'parse_accumulation',
           'split_batch', 'surrogate_loss']


class Embedded(NamedTuple):
    """What one pass over a (micro-)batch gives the losses."""
    #: Tensors the batch-wide losses read, each with the samples along dim 0.
    representations: Dict[str, torch.Tensor]
    #: Per-item losses: name -> (mean over this batch's items, number of items), for a loss
    #: whose value on a larger batch is the item-weighted mean of its parts.
    local_losses: Dict[str, Tuple[torch.Tensor, torch.Tensor]]


def split_batch(inputs: Union[dict, torch.Tensor], data_samples: Optional[Sequence],
                micro_batches: int) -> List[Tuple[Union[dict, torch.Tensor], Optional[list]]]:
    """Consecutive slices of a batch along the samples.

    Args:
        inputs (dict | torch.Tensor): A tensor, or a dict of tensors (or lists) with the
            samples along dim 0.
        data_samples (Sequence, optional): One per sample.
        micro_batches (int): K; a batch of fewer than K samples gives one slice per sample.

    Returns:
        list: ``(inputs, data_samples)`` per slice, sizes differing by at most one (as
        ``torch.tensor_split``), in order.
    """
    values = inputs.values() if isinstance(inputs, dict) else [inputs]
    batch_size = len(next(v for v in values if v is not None))
    bounds = [(int(chunk[0]), int(chunk[-1]) + 1) for chunk in
              torch.tensor_split(torch.arange(batch_size), min(micro_batches, batch_size))]

    def take(value, start, stop):
        return value[start:stop] if value is not None else None

    return [({k: take(v, *b) for k, v in inputs.items()} if isinstance(inputs, dict) else
             take(inputs, *b), take(data_samples, *b)) for b in bounds]


def _rng_state(device: torch.device) -> tuple:
    """The default generators' states: the CPU's and, for a CUDA batch, that device's."""
    cuda = torch.cuda.get_rng_state(device) if device.type == 'cuda' else None
    return torch.get_rng_state(), cuda


def _set_rng_state(state: tuple, device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def _device_of(inputs: Union[dict, torch.Tensor]) -> torch.device:
    values = inputs.values() if isinstance(inputs, dict) else [inputs]
    return next(v.device for v in values if torch.is_tensor(v))


def loss_multiplier(optim_wrapper, device: torch.device) -> Union[float, torch.Tensor]:
    """The factor ``optim_wrapper.update_params`` applies to a loss before ``backward``.

    Raises:
        ValueError: For a wrapper whose backward this module cannot reproduce (not
            mmengine's ``OptimWrapper`` or ``AmpOptimWrapper``; several optimizers), or with
            ``accumulative_counts`` > 1.
    """
    backward = getattr(type(optim_wrapper), 'backward', None)
    if backward not in (OptimWrapper.backward, AmpOptimWrapper.backward):
        raise ValueError(f'model.accumulation: optim_wrapper type '
                         f'{type(optim_wrapper).__name__} is not supported (OptimWrapper or '
                         f'AmpOptimWrapper with one optimizer)')
    if getattr(optim_wrapper, '_accumulative_counts', 1) != 1:
        raise ValueError(f'model.accumulation and optim_wrapper.accumulative_counts='
                         f'{optim_wrapper._accumulative_counts} cannot be combined: the '
                         f'latter averages the losses of separate steps')
    if isinstance(optim_wrapper, AmpOptimWrapper):
        # GradScaler's current scale, as the tensor it multiplies losses by.
        return optim_wrapper.loss_scaler.scale(torch.ones((), device=device))
    return 1.0


def _dot(tensor: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """<tensor, grad>, summed in at least float32; its gradient w.r.t. ``tensor`` is
    ``grad`` (cast to ``tensor``'s dtype, which it has)."""
    dtype = torch.promote_types(tensor.dtype, torch.float32)
    return (tensor.to(dtype) * grad.to(dtype)).sum()


def surrogate_loss(embedded: Embedded,
                   representation_grads: Dict[str, torch.Tensor],
                   local_weights: Dict[str, Union[float, torch.Tensor]],
                   parameter_grads: Dict[str, torch.Tensor],
                   module: nn.Module) -> torch.Tensor:
    """A scalar whose gradient is the batch-wide loss's, restricted to one micro-batch.

    Args:
        embedded (Embedded): The micro-batch's ``embed`` output, computed with gradient.
        representation_grads (dict): Gradient of the (scaled) batch-wide loss w.r.t. each of
            this micro-batch's representations (the rows of the cached leaves).
        local_weights (dict): Multiplier of each local loss's mean: the micro-batch's share of
            the items times the loss scale.
        parameter_grads (dict): Gradient of the (scaled) batch-wide loss w.r.t. the
            parameters it uses directly, by name (given to one micro-batch only, so that
            they enter ``.grad`` once, inside DDP's synchronised backward).
        module (nn.Module): The model, to look up those parameters.

    Returns:
        torch.Tensor: The sum of ``<representation, grad>``, ``weight * local mean`` and
        ``<parameter, grad>``. Only its gradient means something.
    """
    terms = [_dot(embedded.representations[name], grad)
             for name, grad in representation_grads.items()
             if embedded.representations[name].requires_grad]
    terms += [embedded.local_losses[name][0] * weight for name, weight in local_weights.items()
              if embedded.local_losses[name][0].requires_grad]
    if parameter_grads:
        parameters = dict(module.named_parameters())
        terms += [_dot(parameters[name], grad) for name, grad in parameter_grads.items()]
    if not terms:
        raise RuntimeError(f'{type(module).__name__}: nothing in the accumulated step needs '
                           f'a gradient')
    return sum(terms[1:], terms[0])


def _concatenate(parts: List[Dict[str, torch.Tensor]]
                 ) -> Tuple[Dict[str, torch.Tensor], Dict[str, List[int]]]:
    """Per key: the micro-batches' tensors along dim 0, and their sizes."""
    joined, sizes = {}, {}
    for name in parts[0]:
        tensors = [part[name] for part in parts]
        joined[name] = torch.cat(tensors, dim=0)
        sizes[name] = [len(t) for t in tensors]
    return joined, sizes


def _local_totals(parts: List[Embedded]) -> Tuple[Dict[str, torch.Tensor],
                                                  List[Dict[str, float]]]:
    """Each local loss over the whole batch (the item-weighted mean of the micro-batches'
    means), and each micro-batch's share of the items per loss."""
    totals, shares = {}, [{} for _ in parts]
    for name in parts[0].local_losses:
        counts = [float(part.local_losses[name][1]) for part in parts]
        items = sum(counts) or 1.0
        totals[name] = sum(part.local_losses[name][0].detach() * (count / items)
                           for part, count in zip(parts, counts))
        for share, count in zip(shares, counts):
            share[name] = count / items
    return totals, shares


class _Cache(NamedTuple):
    """What the first pass over the micro-batches keeps."""
    rng_states: List[tuple]  # before each micro-batch
    final_rng_state: tuple  # after the last one
    recompute_inputs: List[dict]  # what each micro-batch's second pass reads
    representations: Dict[str, torch.Tensor]  # concatenated over the micro-batches
    sizes: Dict[str, List[int]]  # each micro-batch's rows of them
    local_totals: Dict[str, torch.Tensor]  # each local loss over the whole batch
    shares: List[Dict[str, float]]  # each micro-batch's share of each local loss's items


def _embed_without_gradient(model: nn.Module, chunks: list, context: Callable,
                            device: torch.device) -> _Cache:
    """Phase 1: every micro-batch's :class:`Embedded`, without gradient, and the random
    generators' states that reproduce its draws."""
    states, parts, recompute_inputs = [], [], []
    with torch.no_grad(), context():
        for inputs, _ in chunks:
            states.append(_rng_state(device))
            parts.append(model.embed(inputs))
            recompute_inputs.append(model.recompute_inputs(inputs, parts[-1].representations))
    final_state = _rng_state(device)
    local_totals, shares = _local_totals(parts)
    representations, sizes = _concatenate([part.representations for part in parts])
    return _Cache(states, final_state, recompute_inputs, representations, sizes, local_totals,
                  shares)


def _batch_loss_gradients(model: nn.Module, cache: _Cache, context: Callable,
                          multiplier: Union[float, torch.Tensor]):
    """Phase 2: the batch-wide losses on the cached representations as leaves, and the
    gradients of the (scaled) total loss w.r.t. those leaves and the parameters it reads.

    Returns:
        tuple: the total loss, ``parse_losses``' logged values, the leaves' gradients split
        per micro-batch (by name) and the parameters' gradients (by name).
    """
    leaves = {name: tensor.detach().requires_grad_(tensor.is_floating_point())
              for name, tensor in cache.representations.items()}
    # The losses read views of the leaves: torch's module backward hooks (ModuleTracker, as
    # in FlopCounterMode) refuse a leaf module input under autograd.grad.
    with context():
        losses = model.batch_losses({name: leaf.view_as(leaf) if leaf.requires_grad else leaf
                                     for name, leaf in leaves.items()})
    losses.update(cache.local_totals)
    loss, log_vars = model.parse_losses(losses)
    leaf_names = [name for name, leaf in leaves.items() if leaf.requires_grad]
    parameters = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    wrt = [leaves[name] for name in leaf_names] + [p for _, p in parameters]
    grads = (torch.autograd.grad(loss * multiplier, wrt, allow_unused=True)
             if loss.requires_grad else [None] * len(wrt))
    leaf_grads = {name: torch.split(grad, cache.sizes[name])
                  for name, grad in zip(leaf_names, grads) if grad is not None}
    parameter_grads = {name: grad for (name, _), grad in zip(parameters, grads[len(leaf_names):])
                       if grad is not None}
    return loss, log_vars, leaf_grads, parameter_grads


def accumulated_train_step(model: nn.Module, data: dict, optim_wrapper, micro_batches: int,
                           ddp: Optional[nn.Module] = None) -> Dict[str, torch.Tensor]:
    """One optimizer step on a batch, computed in ``micro_batches`` slices, with the loss and
    gradients of the whole batch.

    The batch (what the dataloader gave: K x B samples per device) goes through the data
    preprocessor whole and is then split (:func:`split_batch`). The step then runs the three
    phases of the module docstring (all under ``optim_wrapper.optim_context``: autocast with
    AMP), and hands the step's loss to ``optim_wrapper.update_params`` as a detached leaf: its
    backward adds nothing (the gradients are already in ``.grad``, scaled as the wrapper's
    backward would scale them), and what ``update_params`` does around it (the
    ``NonFiniteCheckHook``'s loss and gradient checks, AMP's unscaling and step, clipping,
    ``zero_grad``) sees the same step as without accumulation.

    Args:
        model (nn.Module): The model (unwrapped), with ``embed``, ``batch_losses``,
            ``recompute_inputs``, ``parse_losses`` and ``data_preprocessor``.
        data (dict): The dataloader's batch.
        optim_wrapper (OptimWrapper): mmengine's ``OptimWrapper`` or ``AmpOptimWrapper``,
            ``accumulative_counts=1``.
        micro_batches (int): K.
        ddp (nn.Module, optional): The DDP wrapper of ``model``: the second passes run
            through it, all but the last under ``no_sync()``.

    Returns:
        dict: The logged values of ``parse_losses``.
    """
    outer = ddp if ddp is not None else model

    def context():
        return optim_wrapper.optim_context(outer)

    with context():
        data = model.data_preprocessor(data, training=True)
    chunks = split_batch(data['inputs'], data.get('data_samples'), micro_batches)
    device = _device_of(data['inputs'])
    multiplier = loss_multiplier(optim_wrapper, device)
    cache = _embed_without_gradient(model, chunks, context, device)
    loss, log_vars, leaf_grads, parameter_grads = _batch_loss_gradients(
        model, cache, context, multiplier)
    cache = cache._replace(representations={})  # the gradients are what phase 3 needs

    # 3. Each micro-batch again, with gradient, back-propagating the kept gradients.
    for index, (_, data_samples) in enumerate(chunks):
        last = index == len(chunks) - 1
        _set_rng_state(cache.rng_states[index], device)
        kwargs = dict(representation_grads={n: g[index] for n, g in leaf_grads.items()},
                      local_weights={n: multiplier * share
                                     for n, share in cache.shares[index].items()},
                      parameter_grads=parameter_grads if last else {})
        with (ddp.no_sync() if ddp is not None and not last else nullcontext()):
            with context():
                surrogate = outer(cache.recompute_inputs[index], data_samples,
                                  mode='surrogate', **kwargs)
            surrogate.backward()
    _set_rng_state(cache.final_rng_state, device)

    optim_wrapper.update_params(loss.detach().requires_grad_())
    return log_vars


def parse_accumulation(accumulation: Optional[dict], owner: str) -> int:
    """K from ``accumulation=dict(micro_batches=K)`` (None: 1).

    Raises:
        ValueError: Naming ``owner`` and what was expected.
    """
    if accumulation is None:
        return 1
    if (not isinstance(accumulation, dict) or set(accumulation) != {'micro_batches'}
            or isinstance(accumulation['micro_batches'], bool)
            or not isinstance(accumulation['micro_batches'], int)
            or accumulation['micro_batches'] < 1):
        raise ValueError(f'{owner}: accumulation must be dict(micro_batches=K) with an integer '
                         f'K >= 1, got {accumulation!r}')
    return accumulation['micro_batches']

