"""Fp16GradCompressionHook: under DDP the all-reduced gradients are the fp32 ones rounded to
fp16 (a one-process gloo group: the all-reduce is the identity, the compression is not)."""
import socket
from types import SimpleNamespace

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from rils_mm.engine.hooks import Fp16GradCompressionHook


def free_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def gradients(model, inputs):
    model(inputs).pow(2).sum().backward()
    return [param.grad.clone() for param in model.parameters()]


def test_ddp_gradients_are_all_reduced_in_fp16():
    torch.manual_seed(0)
    plain = torch.nn.Linear(8, 4)
    reference = gradients(plain, inputs := torch.randn(3, 8) * 1.2345)
    dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{free_port()}', rank=0,
                            world_size=1)
    try:
        model = torch.nn.Linear(8, 4)
        model.load_state_dict(plain.state_dict())
        ddp = DistributedDataParallel(model)
        Fp16GradCompressionHook().before_train(SimpleNamespace(model=ddp))
        compressed = gradients(ddp, inputs)
    finally:
        dist.destroy_process_group()
    for grad, ref in zip(compressed, reference):
        assert torch.equal(grad, ref.half().float())
        assert not torch.equal(grad, ref)  # fp32 values with more than fp16's precision


def test_without_ddp_it_changes_nothing():
    model = torch.nn.Linear(8, 4)
    Fp16GradCompressionHook().before_train(SimpleNamespace(model=model))
    torch.manual_seed(0)
    inputs = torch.randn(3, 8) * 1.2345
    grads = gradients(model, inputs)
    assert not all(torch.equal(g, g.half().float()) for g in grads)
