"""The training process's concerns (pipeline/runtime.py): the device, torchrun's process group, glibc's allocator,
running out of memory, stop signals."""

import copy

import pytest
import torch

from pipeline.errors import UserError
from pipeline.runtime import resolve_device


@pytest.mark.parametrize("cuda, mps, auto", [(True, True, "cuda"), (False, True, "mps"), (False, False, "cpu")])
def test_auto_picks_cuda_then_mps_then_cpu_and_a_missing_device_is_one_line(monkeypatch, cuda, mps, auto):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    assert resolve_device("auto") == torch.device(auto)
    assert resolve_device("cpu") == torch.device("cpu")
    if not cuda:
        with pytest.raises(UserError) as e:
            resolve_device("cuda")
        assert str(e.value) == "train.device = cuda but no CUDA GPU is visible to PyTorch; set train.device: auto or cpu"
    if not mps:
        with pytest.raises(UserError) as e:
            resolve_device("mps")
        assert str(e.value) == ("train.device = mps but Apple's MPS backend is not available; set train.device: "
                                "auto or cpu")
    else:
        assert resolve_device("mps") == torch.device("mps")


def test_out_of_memory_becomes_one_line_naming_the_fix():
    from pipeline.runtime import is_out_of_memory, out_of_memory_as_user_error

    cpu_oom = RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
                           "memory: you tried to allocate 40000000000000 bytes. Error code 12")
    for exc in (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"), cpu_oom):
        assert is_out_of_memory(exc)
        with pytest.raises(UserError) as info:
            with out_of_memory_as_user_error(torch.device("cuda"), 256, 128):
                raise exc
        assert str(info.value) == ("out of memory on cuda training 128x128 images in batches of 256: "
                                   "lower train.batch_size (e.g. 128) or preprocess.size")
    other = RuntimeError("mat1 and mat2 shapes cannot be multiplied")
    assert not is_out_of_memory(other)
    with pytest.raises(RuntimeError, match="shapes"):
        with out_of_memory_as_user_error(torch.device("cpu"), 256, 128):
            raise other


def test_a_first_ctrl_c_asks_to_stop_a_second_aborts_and_the_handlers_come_back():
    import os
    import signal

    from pipeline.runtime import GracefulStop

    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with GracefulStop() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested and stop.signum == signal.SIGINT  # training finishes its epoch, then stops
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)  # a second signal, of either kind: at once
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


class _FakeMallopt:
    def __init__(self, answer=1):
        self.calls, self.answer = [], answer

    def __call__(self, param, value):
        self.calls.append((param, value))
        return self.answer


@pytest.mark.parametrize("answer", [1, 0])
def test_keep_freed_memory_raises_glibcs_mmap_and_trim_thresholds(monkeypatch, answer):
    """glibc's malloc.h: M_TRIM_THRESHOLD is -1, M_MMAP_THRESHOLD -3; the thresholds 512 MiB and 1 GiB."""
    import ctypes
    import platform

    from pipeline.runtime import keep_freed_memory

    fake = _FakeMallopt(answer)
    monkeypatch.setattr(platform, "system", lambda: "Linux")
    monkeypatch.setattr(platform, "libc_ver", lambda: ("glibc", "2.36"))
    monkeypatch.setattr(ctypes, "CDLL", lambda name: type("Libc", (), {"mallopt": fake})() if name == "libc.so.6"
                        else pytest.fail(name))
    assert keep_freed_memory() is bool(answer)
    assert fake.calls == ([(-3, 512 * 2 ** 20), (-1, 2 ** 30)] if answer else [(-3, 512 * 2 ** 20)])
    assert (fake.argtypes, fake.restype) == ([ctypes.c_int, ctypes.c_int], ctypes.c_int)


def test_keep_freed_memory_does_nothing_without_glibc(monkeypatch):
    import ctypes
    import platform

    from pipeline.runtime import keep_freed_memory

    monkeypatch.setattr(ctypes, "CDLL", lambda name: pytest.fail("no C library may be loaded"))
    monkeypatch.setattr(platform, "system", lambda: "Darwin")
    assert keep_freed_memory() is False
    monkeypatch.setattr(platform, "system", lambda: "Linux")
    monkeypatch.setattr(platform, "libc_ver", lambda: ("musl", "1.2"))
    assert keep_freed_memory() is False

    def missing(name):
        raise OSError("libc.so.6: cannot open shared object file")

    monkeypatch.setattr(platform, "libc_ver", lambda: ("glibc", "2.36"))
    monkeypatch.setattr(ctypes, "CDLL", missing)
    assert keep_freed_memory() is False


def test_init_distributed_joins_the_group_only_under_torchrun(monkeypatch):
    import torch.distributed as dist

    from pipeline import runtime
    from pipeline.runtime import init_distributed

    joined = []
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend: joined.append(backend))
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert init_distributed("cpu") is None
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert init_distributed("cpu") is None and joined == []
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert init_distributed("cpu") == torch.device("cpu") and joined == ["gloo"]
    # on CUDA: this process's GPU is LOCAL_RANK's, and the backend nccl
    chosen = []
    monkeypatch.setattr(runtime, "resolve_device", lambda name: torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: chosen.append(i))
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert init_distributed("auto") == torch.device("cuda", 1) and chosen == [1] and joined == ["gloo", "nccl"]
    monkeypatch.delenv("LOCAL_RANK")
    assert init_distributed("auto") == torch.device("cuda", 0) and chosen == [1, 0]
    monkeypatch.setattr(dist, "is_initialized", lambda: True)  # already joined: not twice
    init_distributed("auto")
    assert joined == ["gloo", "nccl", "nccl"]


def test_batch_norm_across_processes_is_batchnorm2d_for_one_process_values_gradients_and_running_stats(tmp_path):
    """In a process group of one, the all-reduced statistics are the batch's own: outputs, input and parameter
    gradients and running statistics equal torch's BatchNorm2d (the two-process case: tests/test_train_stage.py's
    DDP test); the state dict keeps its keys, and eval mode uses the running statistics."""
    import torch.distributed as dist

    from pipeline.runtime import ProcessGroupBatchNorm2d, batch_norm_across_processes

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'group'}", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        # no bias before the normalisation: its gradient is zero up to rounding, which no tolerance compares
        ref = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, bias=False), torch.nn.BatchNorm2d(4), torch.nn.LeakyReLU(0.2))
        with torch.no_grad():
            ref[1].weight.uniform_(0.5, 1.5)
            ref[1].bias.uniform_(-0.5, 0.5)
        ours = batch_norm_across_processes(copy.deepcopy(ref))
        assert type(ours[1]) is ProcessGroupBatchNorm2d and ours.state_dict().keys() == ref.state_dict().keys()
        x = (torch.randn(5, 3, 9, 9) * 3 + 2).to(memory_format=torch.channels_last)
        for _ in range(2):  # two steps: the running statistics move twice
            xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
            ya, yb = ref(xa), ours(xb)
            torch.testing.assert_close(yb, ya, rtol=1e-5, atol=1e-5)
            w = torch.randn(ya.shape, generator=torch.Generator().manual_seed(1))
            (ya * w).sum().backward()
            (yb * w).sum().backward()
            torch.testing.assert_close(xb.grad, xa.grad, rtol=1e-4, atol=1e-4)
            for a, b in zip(ref.parameters(), ours.parameters()):
                torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-4)
        for key, value in ref.state_dict().items():
            torch.testing.assert_close(ours.state_dict()[key], value, rtol=1e-5, atol=1e-6)
        ref.eval(), ours.eval()
        torch.testing.assert_close(ours(x), ref(x))
    finally:
        dist.destroy_process_group()
