"""Accumulated steps (``accumulation=dict(micro_batches=K)``, GradCache): K micro-batches of B
make one step with the loss and every parameter gradient of one step on the K x B batch.

Each comparison runs in float64, so that the only differences left are summation order. The
random draws of the accumulated step (one ``torch.rand`` per micro-batch: the masks) are
recorded; the test checks that the second pass over each micro-batch drew the same, and gives
the reference step on the whole batch the same masks (the concatenation of the draws).
"""
import copy
from types import SimpleNamespace

import pytest
import torch
from mmengine.logging import MessageHub
from mmengine.optim import OptimWrapper
from mmpretrain.registry import MODELS

import rils_mm  # noqa: F401
from rils_mm.engine.errors import RunStopped
from rils_mm.engine.hooks import NonFiniteCheckHook
from rils_mm.models.model_wrappers import GradCacheDistributedDataParallel
from rils_mm.models.utils.grad_cache import split_batch
from test_clip_teacher import TINY_CLIP
from test_framework import TINY_MAE_HEAD, TINY_MAE_NECK
from test_mammut import CAPTIONS, TINY_MAMMUT, tokens
from test_rils_algorithm import TINY_RILS, make_batch

TINY_MAE_CLIP = dict(copy.deepcopy(TINY_CLIP), type='MAECLIP', neck=TINY_MAE_NECK,
                     head=TINY_MAE_HEAD, pixel_loss_weight=0.7)
TINY_LIT = dict(copy.deepcopy(TINY_CLIP), type='LiT', lock_cfg=dict(backbone=True))
VISION_SPACE = copy.deepcopy(TINY_RILS)
VISION_SPACE['head']['prototypes'] = dict(type='RandomPrototypes', num_prototypes=32)
# float64 leaves only summation order: relative differences of a few 1e-16 per operation.
EXACT = dict(rtol=1e-10, atol=1e-12)


def build(cfg, **model_args):
    """The model in float64; its data preprocessor hands float64 inputs on."""
    torch.manual_seed(0)
    model = MODELS.build(dict(copy.deepcopy(cfg), **model_args))
    model.init_weights()
    model.double().train()
    preprocess = model.data_preprocessor.forward

    def in_float64(data, training=False):
        out = preprocess(data, training)
        out['inputs'] = {k: v.double() if v.is_floating_point() else v
                         for k, v in out['inputs'].items()}
        return out

    model.data_preprocessor.forward = in_float64
    return model


class RecordedRand:
    """``torch.rand`` that records its draws, or hands out given ones."""

    def __init__(self, monkeypatch):
        self.original = torch.rand
        self.draws, self.replay = [], None
        monkeypatch.setattr(torch, 'rand', self)

    def __call__(self, *args, **kwargs):
        if self.replay is not None:
            return self.replay.pop(0)
        draw = self.original(*args, **kwargs)
        self.draws.append(draw)
        return draw

    def replay_whole_batch(self, micro_batches):
        """Check that both passes drew alike; then replay the first pass's draws, joined per
        draw site over the micro-batches, for the reference step on the whole batch."""
        first, second = self.draws[:len(self.draws) // 2], self.draws[len(self.draws) // 2:]
        assert len(first) == len(second) and len(first) % micro_batches == 0
        for a, b in zip(first, second):
            assert torch.equal(a, b)
        per = len(first) // micro_batches
        self.replay = [torch.cat(first[j::per]) for j in range(per)]
        return first


def capture_update(optim_wrapper):
    """Replace ``update_params`` by a recorder that leaves the gradients in place."""
    seen = []
    optim_wrapper.update_params = lambda loss, **kwargs: seen.append(loss)
    return seen


def accumulated_step(model, data):
    """``train_step`` with K from the model; returns (loss, logged values, gradients)."""
    optim_wrapper = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.0))
    seen = capture_update(optim_wrapper)
    log = model.train_step(data, optim_wrapper)
    assert len(seen) == 1 and not seen[0].grad_fn  # one update, after the gradients
    return seen[0].detach(), log, gradients(model)


def whole_batch_step(model, data):
    """The reference: one pass on the whole batch, backward."""
    batch = model.data_preprocessor(data, True)
    loss, log = model.parse_losses(model(**batch, mode='loss'))
    loss.backward()
    return loss.detach(), log, gradients(model)


def gradients(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_same_step(accumulated, reference, tolerance=EXACT):
    """Same loss, logged values and gradients (the same parameters have one); returns the
    largest absolute differences of the loss and of the gradients."""
    (loss, log, grads), (ref_loss, ref_log, ref_grads) = accumulated, reference
    torch.testing.assert_close(loss, ref_loss, **tolerance)
    assert list(log) == list(ref_log)
    for key in log:
        torch.testing.assert_close(log[key].detach(), ref_log[key].detach(), **tolerance,
                                   msg=key)
    assert set(grads) == set(ref_grads)
    for name, grad in ref_grads.items():
        torch.testing.assert_close(grads[name], grad, **tolerance, msg=name)
    return ((loss - ref_loss).abs().item(),
            max((grads[n] - g).abs().max().item() for n, g in ref_grads.items()))


def pairs(size=8, seed=0):
    images, texts, _ = make_batch(size, seed)
    return dict(inputs=dict(images=images, texts=texts))


def caption_pairs():
    """Eight real captions of different lengths (MaMMUT truncates each micro-batch to its
    longest caption and averages over its tokens)."""
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    return dict(inputs=dict(images=images, texts=tokens(CAPTIONS)))


def feature_pairs():
    """Cached image features (LiT with a locked tower) and captions."""
    data = pairs(8)
    features = torch.randn(8, 32, generator=torch.Generator().manual_seed(1))
    return dict(inputs=dict(image_features=features, texts=data['inputs']['texts']))


NO_FILTER = copy.deepcopy(TINY_RILS)
NO_FILTER['head']['loss'] = dict(type='LanguageSpaceReconstructionLoss', filter_correct=False)
# name -> (model config, batch of 8, draws per micro-batch: the masks)
CASES = {
    'clip': (TINY_CLIP, pairs, 0),
    'rils': (TINY_RILS, pairs, 1),
    'rils_flip': (dict(copy.deepcopy(TINY_RILS), intact_keep_ratio=0.5), pairs, 1),
    'rils_no_filter': (NO_FILTER, pairs, 1),
    'rils_vision_space': (VISION_SPACE, pairs, 1),
    'mae_clip': (TINY_MAE_CLIP, pairs, 1),
    'lit_locked_images': (TINY_LIT, pairs, 0),
    'lit_cached_features': (TINY_LIT, feature_pairs, 0),
    'mammut': (TINY_MAMMUT, caption_pairs, 0),
}


@pytest.mark.parametrize('micro_batches', [4])
@pytest.mark.parametrize('case', list(CASES))
def test_k_micro_batches_equal_one_step_on_the_whole_batch(case, micro_batches, monkeypatch):
    cfg, make_data, draws_per_micro_batch = CASES[case]
    data = make_data()
    model = build(cfg, accumulation=dict(micro_batches=micro_batches))
    reference = build(cfg)
    rand = RecordedRand(monkeypatch)
    accumulated = accumulated_step(model, data)
    assert len(rand.replay_whole_batch(micro_batches)) == micro_batches * draws_per_micro_batch
    expected = whole_batch_step(reference, data)
    loss_diff, grad_diff = assert_same_step(accumulated, expected)
    print(f'{case}: K={micro_batches}, loss {float(expected[0]):.6f}, max |loss difference| '
          f'{loss_diff:.2e}, max |gradient difference| {grad_diff:.2e}')
    log = expected[1]
    if 'loss_reconstruction' in log:  # the test would be vacuous with nothing kept
        assert log['recon_kept'] > 0 and log['loss_reconstruction'] > 0
    if case.startswith('lit'):
        assert not any(n.startswith('backbone.') for n in accumulated[2])
    if case == 'mammut':
        assert 'loss_contrastive.logit_bias' in accumulated[2]  # used by the loss alone


def test_uneven_micro_batches_equal_the_whole_batch(monkeypatch):
    """A batch of 8 in 3 micro-batches (3, 3, 2: the last batch of an epoch may be short)."""
    assert [len(part[0]['texts']) for part in
            split_batch(pairs()['inputs'], None, 3)] == [3, 3, 2]
    data = pairs()
    model, reference = build(TINY_RILS, accumulation=dict(micro_batches=3)), build(TINY_RILS)
    rand = RecordedRand(monkeypatch)
    accumulated = accumulated_step(model, data)
    rand.replay_whole_batch(3)
    assert_same_step(accumulated, whole_batch_step(reference, data))


def test_averaging_micro_batch_losses_is_another_objective():
    """What mmengine's accumulative_counts computes (the mean of the micro-batches' losses)
    is not the contrastive loss of the whole batch: the reason for GradCache."""
    data = pairs()
    model = build(TINY_CLIP)
    reference = whole_batch_step(build(TINY_CLIP), data)
    for part, _ in split_batch(data['inputs'], None, 4):
        batch = model.data_preprocessor(dict(inputs=part), True)
        loss, _ = model.parse_losses(model(**batch, mode='loss'))
        (loss / 4).backward()
    name = 'text_encoder.token_embedding.weight'
    assert not torch.allclose(gradients(model)[name], reference[2][name], rtol=1e-3)


def test_the_step_goes_through_the_non_finite_check():
    """NonFiniteCheckHook wraps update_params: an accumulated step with a non-finite gradient
    or loss stops before the optimizer steps."""
    model = build(TINY_CLIP, accumulation=dict(micro_batches=2))
    optim_wrapper = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.1))
    runner = SimpleNamespace(model=model, optim_wrapper=optim_wrapper, iter=6, epoch=0,
                             message_hub=MessageHub.get_instance('test_grad_cache'))
    hook = NonFiniteCheckHook()
    hook.before_train(runner)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    name = 'text_encoder.token_embedding.weight'
    weight = model.text_encoder.token_embedding.weight
    poison = weight.register_hook(lambda grad: grad * float('nan'))
    with pytest.raises(RunStopped, match=r'non-finite gradient \(in '
                       r'text_encoder.token_embedding.weight\) at iteration 7'):
        model.train_step(pairs(4), optim_wrapper)
    poison.remove()
    with torch.no_grad():
        model.logit_scale.fill_(float('nan'))
    with pytest.raises(RunStopped, match='non-finite loss at iteration 7.*loss_contrastive=nan'):
        model.train_step(pairs(4), optim_wrapper)
    for key, param in model.named_parameters():
        if key != 'logit_scale':
            assert torch.equal(param, before[key]), key
    # A good step goes through and changes the weights.
    with torch.no_grad():
        model.logit_scale.copy_(before['logit_scale'])
    log = model.train_step(pairs(4), optim_wrapper)
    assert torch.isfinite(log['loss']) and not torch.equal(weight, before[name])


@pytest.mark.parametrize('accumulation,message', [
    (dict(micro_batches=0), 'accumulation must be dict(micro_batches=K) with an integer K >= 1'),
    (dict(micro_batches=2.0), 'got {\'micro_batches\': 2.0}'),
    (dict(micro_batch=2), 'accumulation must be dict(micro_batches=K)'),
    (4, 'accumulation must be dict(micro_batches=K)'),
])
def test_bad_accumulation_settings_name_the_key(accumulation, message):
    with pytest.raises(ValueError, match=f'RILS: .*{message}'.replace('(', r'\(').replace(
            ')', r'\)').replace('{', r'\{').replace('}', r'\}')):
        MODELS.build(dict(copy.deepcopy(TINY_RILS), accumulation=accumulation))


def test_a_whole_batch_training_loss_is_refused_and_accumulative_counts_too():
    """With accumulation the plain DDP step (a loss of the whole batch in one pass) would
    silently give up the memory saving; mmengine's accumulative_counts would average steps."""
    model = build(TINY_CLIP, accumulation=dict(micro_batches=2))
    batch = model.data_preprocessor(pairs(4), True)
    with pytest.raises(RuntimeError, match='GradCacheDistributedDataParallel'):
        model(**batch, mode='loss')
    with torch.no_grad():  # evaluation-style use of the loss stays available
        model(**batch, mode='loss')
    averaging = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.1), accumulative_counts=2)
    with pytest.raises(ValueError, match='accumulative_counts=2 cannot be combined'):
        model.train_step(pairs(4), averaging)


def _two_processes_two_micro_batches(rank, world_size, out_dir):
    """Rank r takes pairs 4r..4r+3 in two micro-batches of two; records its draws, loss,
    gradients and how many times DDP's communication hook ran."""
    import torch.distributed as dist
    data = pairs()  # (its generator's draws are not the model's)
    rows = slice(4 * rank, 4 * rank + 4)
    data = dict(inputs={k: v[rows] for k, v in data['inputs'].items()})
    monkeypatch = pytest.MonkeyPatch()
    rand = RecordedRand(monkeypatch)
    model = build(TINY_RILS, accumulation=dict(micro_batches=2))
    ddp = GradCacheDistributedDataParallel(module=model)
    calls = []

    def counting_allreduce(state, bucket):
        calls.append(1)
        work = dist.all_reduce(bucket.buffer().div_(world_size), async_op=True)
        return work.get_future().then(lambda future: future.value()[0])

    ddp.register_comm_hook(None, counting_allreduce)
    optim_wrapper = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.0))
    seen = capture_update(optim_wrapper)
    log = ddp.train_step(data, optim_wrapper)
    draws = rand.draws[:len(rand.draws) // 2]
    assert all(torch.equal(a, b) for a, b in zip(draws, rand.draws[len(draws):]))
    accumulated_calls = len(calls)
    grads = gradients(model)
    # The same wrapper without accumulation: DDP's ordinary step, for the number of
    # all-reduce calls of one backward.
    model.micro_batches = 1
    ddp.train_step(data, OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.0)))
    torch.save(dict(loss=seen[0].detach(), log={k: v.detach() for k, v in log.items()},
                    grads=grads, draws=draws, calls=accumulated_calls,
                    plain_calls=len(calls) - accumulated_calls), f'{out_dir}/rank{rank}.pt')
    monkeypatch.undo()


def test_two_processes_with_two_micro_batches_equal_one_process_on_the_whole_batch(
        run_distributed, tmp_path, monkeypatch):
    run_distributed(_two_processes_two_micro_batches, 2, str(tmp_path))
    ranks = [torch.load(tmp_path / f'rank{r}.pt') for r in range(2)]
    # Gradients are all-reduced once per step: as many calls as one ordinary backward.
    for rank in ranks:
        assert rank['calls'] == rank['plain_calls'] >= 1
    data, reference = pairs(), build(TINY_RILS)
    rand = RecordedRand(monkeypatch)
    rand.replay = [torch.cat([d for rank in ranks for d in rank['draws']])]
    loss, log, grads = whole_batch_step(reference, data)
    assert log['recon_kept'] > 0
    # The ranks' losses are local losses over the global batch; their mean is the loss.
    torch.testing.assert_close((ranks[0]['loss'] + ranks[1]['loss']) / 2, loss, **EXACT)
    for rank in ranks:  # DDP leaves the averaged gradient on every rank
        assert set(rank['grads']) == set(grads)
        for name, grad in grads.items():
            torch.testing.assert_close(rank['grads'][name], grad, **EXACT, msg=name)
    largest = max((r['grads'][n] - g).abs().max().item() for r in ranks
                  for n, g in grads.items())
    print(f'2 processes x 2 micro-batches vs 1 process: max |loss difference| '
          f'{((ranks[0]["loss"] + ranks[1]["loss"]) / 2 - loss).abs().item():.2e}, '
          f'max |gradient difference| {largest:.2e}')


def test_mixed_precision_scales_every_part_of_the_gradient_alike(monkeypatch):
    """Under AmpOptimWrapper (bfloat16 autocast, loss scale 1024) the accumulated gradients
    are the whole batch's scaled loss's, as AmpOptimWrapper.backward would give them: each
    part (cached representations, parameters the loss reads, recomputed passes) is scaled
    once. mmengine builds the wrapper only with an accelerator; its check is bypassed here,
    and torch's CPU GradScaler stands in for the CUDA one."""
    import mmengine.optim.optimizer.amp_optimizer_wrapper as amp_wrapper
    from mmengine.optim import AmpOptimWrapper
    data = pairs()
    torch.manual_seed(0)
    model = MODELS.build(dict(copy.deepcopy(TINY_RILS), accumulation=dict(micro_batches=4)))
    model.init_weights()
    reference = copy.deepcopy(model)
    reference.micro_batches = 1
    monkeypatch.setattr(amp_wrapper, 'is_cuda_available', lambda: True)
    optim_wrapper = AmpOptimWrapper(optimizer=torch.optim.SGD(model.parameters(), lr=0.0),
                                    dtype='bfloat16')
    optim_wrapper.loss_scaler = torch.amp.GradScaler('cpu', init_scale=1024.0)
    seen = capture_update(optim_wrapper)
    rand = RecordedRand(monkeypatch)
    model.train_step(data, optim_wrapper)
    rand.replay_whole_batch(4)
    with optim_wrapper.optim_context(reference):
        losses = reference(**reference.data_preprocessor(data, True), mode='loss')
    loss, _ = reference.parse_losses(losses)
    optim_wrapper.loss_scaler.scale(loss).backward()
    torch.testing.assert_close(seen[0], loss.detach())
    grads = gradients(model)
    assert grads['logit_scale'].abs() > 100  # scaled (unscaled: about 3)
    for name, param in reference.named_parameters():
        if param.grad is not None:  # bfloat16 rounding differs between batch sizes
            error = (grads[name] - param.grad).norm() / param.grad.norm().clamp(min=1e-12)
            assert error < 0.03, (name, error.item())
