"""Never let a non-finite loss or gradient into the weights.

mmengine applies whatever ``backward`` produced: once a loss turns NaN the weights do too, the
run goes on and exits 0, and checkpoint rotation replaces the good checkpoints by NaN ones.
This hook guards each optimizer step. Before ``optimizer.step()`` it checks that every loss of
the accumulation window was finite and (unless AMP's dynamic loss scaling, which skips such
steps by itself, is on) that the gradients are. On a bad step it either stops the run
(default) with :class:`~rils_mm.engine.errors.RunStopped` naming the iteration and every loss
term, before anything is saved, or, with ``action='skip'``, drops the step and counts it in
the log. In a distributed run all ranks take the same decision (one all-reduce of a flag per
optimizer step), so they stop or skip together.
"""
import math
from typing import Dict, List, Optional

import torch
from mmengine.dist import all_reduce, get_dist_info
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.optim import AmpOptimWrapper, OptimWrapperDict
from mmpretrain.registry import HOOKS

from ..errors import RunStopped


def _as_float(value) -> float:
    return float(value.detach().float().mean()) if torch.is_tensor(value) else float(value)


def check_learning_rates(optimizer: torch.optim.Optimizer, where: str = 'optimizer') -> None:
    """Raise :class:`RunStopped` if a param group's lr is negative or not finite."""
    for index, group in enumerate(optimizer.param_groups):
        lr = float(group.get('lr', 0.0))
        if not math.isfinite(lr) or lr < 0:
            raise RunStopped(f'{where}: lr={lr} in parameter group {index} is not a finite, '
                             f'non-negative number')


@HOOKS.register_module()
class NonFiniteCheckHook(Hook):
    """Stop, or skip and count, optimizer steps with a non-finite loss or gradient.

    ``tools/train.py`` adds this hook to every run unless the config lists it
    (``--skip-nonfinite`` selects ``action='skip'``).

    Args:
        action (str): ``'stop'`` (default): raise :class:`RunStopped`; the weights of the bad
            step are never applied or saved, so the last checkpoint on disk is the last good
            one. ``'skip'``: drop the step (no update, gradients cleared) and count it.
        check_grads (bool): Also check the gradients' total norm (one reduction over the
            gradients per step). Not done under AMP's dynamic loss scaling. Defaults to True.
        max_consecutive_skips (int): With ``'skip'``: stop after this many bad steps in a row
            (a run that diverged for good). Defaults to 100.
    """

    priority = 'VERY_HIGH'

    def __init__(self, action: str = 'stop', check_grads: bool = True,
                 max_consecutive_skips: int = 100) -> None:
        if action not in ('stop', 'skip'):
            raise ValueError(f"NonFiniteCheckHook: action must be 'stop' or 'skip', got "
                             f'{action!r}')
        self.action = action
        self.check_grads = check_grads
        self.max_consecutive_skips = max_consecutive_skips
        self.skipped = 0
        self.consecutive = 0
        self._runner = None
        self._terms: Dict[str, float] = {}
        self._window_bad = False
        self._names: Dict[int, str] = {}

    # ------------------------------------------------------------------ wiring
    def before_train(self, runner) -> None:
        self._runner = runner
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        self._names = {id(p): name for name, p in model.named_parameters()}
        parse_losses = model.parse_losses

        def parse_and_remember(losses):
            parsed, log_vars = parse_losses(losses)
            self._terms = dict(log_vars)
            return parsed, log_vars

        model.parse_losses = parse_and_remember
        if isinstance(runner.optim_wrapper, OptimWrapperDict):
            wrappers = {f'optim_wrapper.{k}': w for k, w in runner.optim_wrapper.items()}
        else:
            wrappers = dict(optim_wrapper=runner.optim_wrapper)
        for name, wrapper in wrappers.items():
            check_learning_rates(wrapper.optimizer, f'{name}.optimizer')
            self._guard(wrapper)

    def _guard(self, wrapper) -> None:
        """Replace ``wrapper.update_params`` by a checked version (this instance only)."""
        dynamic_amp = (isinstance(wrapper, AmpOptimWrapper)
                       and getattr(wrapper, '_scale_update_param', None) is None)
        check_grads = self.check_grads and not dynamic_amp

        def update_params(loss, step_kwargs=None, zero_kwargs=None):
            self._window_bad |= not bool(torch.isfinite(loss.detach()).all())
            wrapper.backward(wrapper.scale_loss(loss))  # every rank: DDP all-reduces here
            if not wrapper.should_update():
                return
            bad_loss = self._window_bad
            self._window_bad = False
            bad_params = [] if bad_loss or not check_grads else self._non_finite_grads(wrapper)
            bad = bad_loss or bool(bad_params)
            if get_dist_info()[1] > 1:  # a loss is per rank: decide together
                flag = torch.tensor([float(bad)], device=loss.device)
                all_reduce(flag, op='max')
                bad = bool(flag.item())
            if bad:
                wrapper.zero_grad(**(zero_kwargs or {}))
                self._on_bad_step(bad_loss, bad_params)
                return
            self.consecutive = 0
            wrapper.step(**(step_kwargs or {}))
            wrapper.zero_grad(**(zero_kwargs or {}))

        wrapper.update_params = update_params

    # ---------------------------------------------------------------- checks
    def _non_finite_grads(self, wrapper) -> List[str]:
        """Names of (up to 3) parameters whose gradient is not finite; [] when all are."""
        grads = [p.grad for group in wrapper.optimizer.param_groups for p in group['params']
                 if p.grad is not None and not p.grad.is_sparse]
        if not grads or torch.isfinite(torch.stack(torch._foreach_norm(grads)).sum()):
            return []
        names = []
        for group in wrapper.optimizer.param_groups:
            for param in group['params']:
                if param.grad is not None and not torch.isfinite(param.grad).all():
                    names.append(self._names.get(id(param), f'<parameter {tuple(param.shape)}>'))
                    if len(names) == 3:
                        return names
        return names or ['<gradient on another rank>']

    def _on_bad_step(self, bad_loss: bool, bad_params: List[str]) -> None:
        runner = self._runner
        terms = ', '.join(f'{key}={_as_float(value):.4g}' for key, value in self._terms.items())
        what = 'non-finite loss' if bad_loss else (
            f'non-finite gradient (in {", ".join(bad_params)})' if bad_params
            else 'non-finite loss or gradient on another rank')
        where = f'iteration {runner.iter + 1} (epoch {runner.epoch + 1})'
        if self.action == 'stop':
            last = runner.message_hub.get_info('last_ckpt')
            kept = (f'the last checkpoint, {last}, was written before it'
                    if last else 'no checkpoint was written by this run')
            raise RunStopped(
                f'{what} at {where}: {terms or "no loss terms"}. The step was not applied and '
                f'{kept}. Lower the lr or check the data; to skip such steps instead, give '
                f'--skip-nonfinite (NonFiniteCheckHook action="skip").')
        self.skipped += 1
        self.consecutive += 1
        runner.logger.warning(f'Skipped the step of {where}: {what}: {terms}; '
                              f'{self.skipped} step(s) skipped so far')
        if self.consecutive >= self.max_consecutive_skips:
            raise RunStopped(f'{self.consecutive} optimizer steps in a row had a {what} (the '
                             f'last at {where}: {terms}); the run has diverged. Lower the lr.')

    def after_train_iter(self, runner, batch_idx: int, data_batch=None,
                         outputs: Optional[dict] = None) -> None:
        runner.message_hub.update_scalar('train/nonfinite_skipped', self.skipped)

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        checkpoint['nonfinite_skipped'] = self.skipped

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        self.skipped = int(checkpoint.get('nonfinite_skipped', 0))
