"""The training process's concerns, apart from the training itself: which device, joining and leaving a
torchrun process group, the allocator's settings, running out of memory, and stop signals."""

from __future__ import annotations

import os
import signal
import sys
import time
from contextlib import contextmanager

import torch

from .errors import UserError


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' picks cuda, then mps, then cpu; an explicit device that is not there is a user error."""
    cuda = torch.cuda.is_available()
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    if name == "cuda" and not cuda:
        raise UserError("train.device = cuda but no CUDA GPU is visible to PyTorch; set train.device: auto or cpu")
    if name == "mps" and not mps:
        raise UserError("train.device = mps but Apple's MPS backend is not available; set train.device: auto or cpu")
    return torch.device(name)


# glibc's mallopt parameters (malloc.h); values are C ints
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
KEEP_MMAP_THRESHOLD = 512 << 20  # blocks below this come from the heap, not from fresh mmaps
KEEP_TRIM_THRESHOLD = 1 << 30  # the heap is given back to the kernel only past this much free space


def fits_in_memory(nbytes: int, device: torch.device) -> bool:
    """Whether ``nbytes`` of training images take at most half the memory available to ``device`` now."""
    return nbytes <= _memory_available(device) // 2


def _memory_available(device: torch.device) -> int:
    """The GPU's free memory on CUDA, else the machine's (MemAvailable: free and reclaimable)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration):  # not Linux
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def keep_freed_memory() -> bool:
    """Let this process reuse the memory of the previous training step instead of faulting it in again.

    With glibc's defaults, the large blocks of a step (a batch's activations and gradients, ~25 MB at
    batch 16) are handed back to the kernel when freed and faulted in again, page by page and zeroed, by
    the next step: ~6,000 minor page faults per batch-16 step on cpu-2, about 15 % of the step under its
    hypervisor (docs/benchmarks.md). Raising malloc's mmap and trim thresholds keeps them in the heap.
    Process-wide, so it is called by the processes that train or refine codes (the train and reconstruct
    stages, the benchmark), not by the Trainer. Returns whether it took effect (False where the C library is
    not glibc)."""
    import ctypes
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, KEEP_MMAP_THRESHOLD) and mallopt(_M_TRIM_THRESHOLD, KEEP_TRIM_THRESHOLD))


def distributed_world() -> tuple[int, int]:
    """(world size, rank) of torch.distributed, or (1, 0) when not running under torchrun."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def init_distributed(device_name: str = "auto") -> torch.device | None:
    """Under torchrun (WORLD_SIZE > 1): join the process group (nccl on CUDA, gloo on CPU) and return this
    process's device; otherwise None."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    device = resolve_device(device_name)
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


class ProcessGroupBatchNorm2d(torch.nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the whole batch across the processes of a torchrun,
    on any device and backend (gloo too): what SyncBatchNorm does on GPUs only. The per-channel sums are
    all-reduced with ``torch.distributed.nn.functional.all_reduce``, which is differentiable, so the gradients
    are those of one process with the whole batch; sums in float64 (E[x^2] - E[x]^2 loses digits in float32).
    The running statistics move as BatchNorm2d's do (unbiased variance). Eval mode is plain BatchNorm2d."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        import torch.distributed.nn.functional as dist_fn

        c, x64 = x.shape[1], x.double()
        count = torch.full((1,), float(x.shape[0] * x.shape[2] * x.shape[3]), dtype=torch.float64, device=x.device)
        stats = dist_fn.all_reduce(torch.cat([x64.sum((0, 2, 3)), (x64 * x64).sum((0, 2, 3)), count]))
        n = stats[-1]
        mean = stats[:c] / n
        var = stats[c:2 * c] / n - mean * mean
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                self.running_mean.mul_(1 - self.momentum).add_(self.momentum * mean.to(x.dtype))
                self.running_var.mul_(1 - self.momentum).add_(self.momentum * (var * n / (n - 1)).to(x.dtype))
        shape = (1, c, 1, 1)
        y = (x - mean.to(x.dtype).view(shape)) * torch.rsqrt(var.to(x.dtype).view(shape) + self.eps)
        return y * self.weight.view(shape) + self.bias.view(shape) if self.affine else y


def batch_norm_across_processes(module: torch.nn.Module) -> torch.nn.Module:
    """``module`` with every BatchNorm2d replaced in place by a :class:`ProcessGroupBatchNorm2d` holding the same
    parameters and buffers (the state dict's keys and values are unchanged)."""
    for name, child in module.named_children():
        if type(child) is torch.nn.BatchNorm2d:
            bn = ProcessGroupBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                         child.track_running_stats, device=child.running_mean.device)
            bn.load_state_dict(child.state_dict())
            setattr(module, name, bn)
        else:
            batch_norm_across_processes(child)
    return module


def is_out_of_memory(exc: BaseException) -> bool:
    """A failed allocation: torch.OutOfMemoryError (CUDA, MPS) or the CPU allocator's RuntimeError."""
    return isinstance(exc, getattr(torch, "OutOfMemoryError", ())) or (
        isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc))


@contextmanager
def out_of_memory_as_user_error(device: torch.device, batch_size: int, image_size: int):
    """Within the block, running out of memory is one line naming the device, the sizes and the fix."""
    try:
        yield
    except Exception as e:
        if not is_out_of_memory(e):
            raise
        smaller = f" (e.g. {batch_size // 2})" if batch_size > 1 else ""
        raise UserError(f"out of memory on {device} training {image_size}x{image_size} images in batches of "
                        f"{batch_size}: lower train.batch_size{smaller} or preprocess.size") from None


class GracefulStop:
    """Within the block, SIGINT and SIGTERM ask training to stop at the next epoch boundary (a second
    signal aborts at once). ``signum`` tells which signal arrived."""

    def __init__(self):
        self.signum: int | None = None
        self._old = {}

    def _handler(self, signum, frame):
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def __enter__(self):
        for s in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[s] = signal.signal(s, self._handler)
            except ValueError:  # not the main thread
                pass
        return self

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)
        return False


@contextmanager
def training_process(device_name: str = "auto"):
    """The device this process trains on, within the block: under torchrun (WORLD_SIZE > 1) in its process group,
    left at the end whatever happens; a device that is not there is one line (a UserError) before any work."""
    device = init_distributed(device_name) or resolve_device(device_name)
    try:
        yield device
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


class Progress:
    """Training progress on stderr: a tqdm bar on a terminal; in a log file or a DVC queue log one line per
    tenth of the run (and the last epoch), not a bar redrawn every epoch."""

    LINES = 10

    def __init__(self, target: int, initial: int = 0):
        self.target, self.t0 = target, time.perf_counter()
        self.every = max(1, round(target / self.LINES))
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=target, initial=initial, desc="train", unit="epoch", dynamic_ncols=True)

    def update(self, row: dict) -> None:
        losses = {k: f"{row[k]:.1f}" for k in ("loss", "recon", "kl")}
        if self.bar is not None:
            self.bar.set_postfix(losses)
            self.bar.update(1)
        elif row["epoch"] % self.every == 0 or row["epoch"] == self.target:
            print(f"train: epoch {row['epoch']}/{self.target}  " + "  ".join(f"{k} {v}" for k, v in losses.items())
                  + f"  ({time.perf_counter() - self.t0:.0f} s)", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
