"""Scale-out on torch.distributed, launched by `torchrun` (docs/scaling.md).

    torchrun --nproc-per-node N -m instructkit sft ...      # any training stage

Data parallel: every rank loads the whole dataset and computes the same global batch order (the
run's seed and the epoch); `shard` hands each rank a contiguous slice of every global batch. A
stage weights each rank's loss by that rank's share of the batch's denominator (tokens, prompts,
pairs), so the averaged gradient equals the one-process gradient up to float summation order, and
a 2-process loss curve equals the 1-process one. Rank 0 alone writes (checkpoints, metrics,
instructkit.json, the model) and prints; checkpoints hold full, unsharded state, so a run resumes
on any number of processes.

Strategies (`dist.strategy`): `ddp` replicates the model (DistributedDataParallel); `fsdp` shards
parameters, gradients and optimiser state over the ranks (FSDP2, `fully_shard` on every
transformer block and on the root), for models that do not fit one device. On GPU the forward
runs under bf16 autocast; on CPU in fp32 (gloo backend).

A stage's training forward goes through `step(fn, *args)`, which runs `fn(model, *args)` as the
wrapper's forward: DDP and FSDP act on forward(), while the stages reach inside their models
(base_model, heads, shared KV caches). Launched without torchrun, nothing here communicates:
world size 1, `step(fn, *args)` is `fn(model, *args)`, and the stages behave exactly as before.
"""
from __future__ import annotations

import atexit
import contextlib
import datetime
import math
import os
import sys
import warnings
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.distributed as dist
from torch import nn

STRATEGIES = ("ddp", "fsdp")


# ----------------------------------------------------------------------------- process group

def launched() -> bool:
    """Whether torchrun (or another launcher setting RANK/WORLD_SIZE/MASTER_ADDR) started us."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))


def setup(timeout_minutes: float = 30.0) -> int:
    """Join the process group torchrun describes (once per process; later calls return at once).
    gloo on CPU, NCCL on GPU. Ranks other than 0 stop printing to stdout and drawing progress bars.
    Returns the world size (1 when not launched by torchrun: then nothing happens)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    if not launched():
        return 1
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(minutes=timeout_minutes))
    if dist.get_rank() != 0:
        # rank-0 guard for everything the stages print: one log, one progress bar, one copy of each
        # warning a stage raises about the (global) run; errors still reach stderr from every rank
        sys.stdout = open(os.devnull, "w")
        os.environ["INSTRUCTKIT_QUIET"] = "1"
        warnings.filterwarnings("ignore", category=UserWarning, module=r"instructkit\.")
    atexit.register(teardown)
    return dist.get_world_size()


def teardown() -> None:
    """Leave the process group (registered at exit by `setup`)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def processes_note(strategy: str, sep: str = ", ") -> str:
    """For a stage's start line: `, 2 processes (ddp)` under torchrun, nothing otherwise."""
    return f"{sep}{world_size()} processes ({strategy})" if is_distributed() else ""


def is_main() -> bool:
    return rank() == 0


def device() -> torch.device:
    """The device of this rank's model: its GPU under torchrun on a GPU machine, else the CPU."""
    if is_distributed() and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    if is_distributed():
        dist.barrier()


# ----------------------------------------------------------------------------- data parallel

def shard_bounds(n: int) -> tuple[int, int]:
    """[start, stop) of this rank's contiguous slice of n items (sizes differ by at most one)."""
    r, w = rank(), world_size()
    return r * n // w, (r + 1) * n // w


def shard(items: Sequence):
    """This rank's contiguous slice of one global batch (a list, or a tensor for a tensor). The
    slices, concatenated in rank order, are the batch in its own order, so gathered per-item
    results line up with a 1-process run."""
    start, stop = shard_bounds(len(items))
    return items[start:stop] if isinstance(items, torch.Tensor) else list(items[start:stop])


def micro_batches(step, items: Sequence, micro_batch_size: int = 0) -> Iterator[tuple[list, bool]]:
    """This rank's share of one global batch in micro-batches (gradient accumulation):
    yields (chunk, live). Every rank yields the same number of chunks, because DDP and FSDP need
    matching collectives; a rank whose share ran out gets (items[:1], False): run it, but weight its
    loss by 0. Gradients are synchronised on the last chunk's backward only. micro_batch_size 0 =
    the whole share in one pass (one process: the whole batch, exactly as before)."""
    mine = shard(items)
    per_rank = math.ceil(len(items) / world_size())
    size = micro_batch_size if micro_batch_size > 0 else max(1, per_rank)
    n = max(1, math.ceil(per_rank / size))
    for k in range(n):
        chunk = mine[k * size:(k + 1) * size]
        _set_grad_sync(step, k == n - 1)
        yield (chunk, True) if chunk else (list(items[:1]), False)
    _set_grad_sync(step, True)


def backward(loss: torch.Tensor, weight: float) -> None:
    """loss.backward() for a rank's part of a global batch whose loss is a weighted mean: `weight`
    is this part's share of the global denominator (the shares of all ranks sum to 1). DDP and FSDP
    average gradients over ranks, hence the factor world_size. One process, whole batch: weight 1."""
    (loss * (weight * world_size())).backward()


def _flat(values: dict[str, float]) -> torch.Tensor:
    return torch.tensor([float(v) for v in values.values()], dtype=torch.float64)


def all_reduce_sum(x):
    """Sum over ranks of a float, a tensor, or a dict of floats (one collective). Identity at world size 1."""
    if not is_distributed():
        return x
    if isinstance(x, dict):
        t = _flat(x)
        dist.all_reduce(t)
        return dict(zip(x, t.tolist()))
    if isinstance(x, torch.Tensor):
        t = x.detach().clone()
        dist.all_reduce(t)
        return t
    t = torch.tensor([float(x)], dtype=torch.float64)
    dist.all_reduce(t)
    return t.item()


def all_reduce_mean(x):
    """Mean over ranks (of equally weighted values), same forms as `all_reduce_sum`."""
    if not is_distributed():
        return x
    s, w = all_reduce_sum(x), world_size()
    if isinstance(s, dict):
        return {k: v / w for k, v in s.items()}
    return s / w


def _all_gather_rows(x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """all_gather along dim 0 when rank r holds sizes[r] rows (padded to the largest, then cut)."""
    padded = x.new_zeros((max(sizes), *x.shape[1:]))
    padded[:x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([p[:n] for p, n in zip(parts, sizes)])


class _Gather(torch.autograd.Function):
    """`_all_gather_rows` whose backward hands each rank the gradient of its own rows, summed over
    ranks (every rank computes the loss on the gathered batch)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, sizes: list[int]):
        ctx.sizes, ctx.rank = sizes, rank()
        return _all_gather_rows(x.detach(), sizes)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        start = sum(ctx.sizes[:ctx.rank])
        return grad[start:start + ctx.sizes[ctx.rank]], None


def gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's `x` along dim 0 in rank order (sizes may differ). Differentiable: a
    loss computed on the gathered tensor, identically on every rank, back-propagates into each
    rank's own rows (summed over ranks, which DDP's averaging undoes). Identity at world size 1."""
    if not is_distributed():
        return x
    n = torch.tensor([x.shape[0]], dtype=torch.long, device=x.device)
    sizes = [torch.zeros_like(n) for _ in range(world_size())]
    dist.all_gather(sizes, n)
    sizes = [int(s) for s in sizes]
    if x.requires_grad:
        return _Gather.apply(x, sizes)
    return _all_gather_rows(x, sizes)


def shard_forward(step, items: Sequence, fn: Callable) -> tuple[torch.Tensor, ...]:
    """Run `fn(model, share)` through `step` on this rank's share of `items` and gather every output
    (tensors whose dim 0 follows the items' order) from all ranks: each rank ends with the whole
    batch's outputs, in the batch's order, gradients flowing back to its own rows. A rank with an
    empty share runs items[:1] and contributes nothing. One process: fn(model, items)."""
    mine = shard(items)
    outs = call(step, fn, mine or list(items[:1]))
    single = isinstance(outs, torch.Tensor)
    outs = (outs,) if single else tuple(outs)
    if not mine:
        outs = tuple(o[:0] for o in outs)
    outs = tuple(gather(o) for o in outs)
    return outs[0] if single else outs


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank `src`'s `obj` on every rank (pickled). Identity at world size 1."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


# ----------------------------------------------------------------------------- model wrappers

class Step(nn.Module):
    """`step(fn, *args)` = `fn(model, *args)`, run as this module's forward (inputs moved to the
    model's device; bf16 autocast on GPU), so DDP and FSDP see every training forward however the
    stage calls its model."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.rng_forked = False

    def forward(self, fn: Callable, *args, **kwargs):
        if not self.rng_forked and rank() > 0:
            # the stages seed (or restore rank 0's RNG state) on every rank, and the stages draw data
            # order and samples from their own generators: the global RNG is left to dropout, whose
            # masks must differ between ranks
            torch.manual_seed(torch.initial_seed() + 1_000_003 * rank())
        self.rng_forked = True
        dev = next(self.model.parameters()).device
        if dev.type == "cuda":
            args, kwargs = _to_device((args, kwargs), dev)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return fn(self.model, *args, **kwargs)
        return fn(self.model, *args, **kwargs)


def _to_device(obj, dev):
    if isinstance(obj, torch.Tensor):
        return obj.to(dev, non_blocking=True)
    if isinstance(obj, dict):
        return {k: _to_device(v, dev) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_device(v, dev) for v in obj)
    return obj


def blocks(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks of a Hugging Face model (the units FSDP shards one by one): the
    children of the ModuleList holding the most parameters."""
    best, best_n = [], 0
    for m in model.modules():
        if isinstance(m, nn.ModuleList) and len(m) > 0:
            n = sum(p.numel() for p in m.parameters())
            if n > best_n:
                best, best_n = list(m), n
    return best


def wrap(model: nn.Module, cfg=None) -> nn.Module:
    """The training wrapper of `model`: `step(fn, *args)` runs fn(model, *args).
    world size 1: a plain `Step`. ddp: DistributedDataParallel around it. fsdp: FSDP2
    (`fully_shard`) on each transformer block and on the root; build the optimiser AFTER this
    (its parameters become sharded DTensors). `cfg` is a DistConfig (or None = ddp)."""
    kind = getattr(cfg, "strategy", "ddp")
    if kind not in STRATEGIES:
        from instructkit.errors import InputError
        raise InputError(f"expected one of {list(STRATEGIES)}", field="dist.strategy")
    step = Step(model)
    if not is_distributed():
        step.instructkit_strategy = "none"
        return step
    dev = device()
    if dev.type == "cuda":
        model.to(dev)
    if kind == "ddp":
        import inspect

        from torch.nn.parallel import DistributedDataParallel as DDP
        # buffers (masks, rotary tables) are the same everywhere: no broadcast before each forward
        no_sync = ("forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DDP).parameters
                   else "broadcast_buffers")
        wrapped = DDP(step, device_ids=[dev.index] if dev.type == "cuda" else None, **{no_sync: False})
        wrapped.instructkit_strategy = "ddp"
        return wrapped
    from torch.distributed.fsdp import fully_shard
    for block in blocks(model):
        fully_shard(block)
    fully_shard(step)
    step._get_fsdp_state()._lazy_init()  # the root is `step`, whatever forward runs first
    step.instructkit_strategy = "fsdp"
    return step


def strategy(step) -> str:
    """"ddp", "fsdp" or "none" for a wrapper from `wrap`; "none" for anything else."""
    return getattr(step, "instructkit_strategy", "none")


def call(model_or_step, fn: Callable, *args):
    """fn(model, *args) through the wrapper when given one (`wrap`), directly on a plain model."""
    if hasattr(model_or_step, "instructkit_strategy"):
        return model_or_step(fn, *args)
    return fn(model_or_step, *args)


def unwrap(step) -> nn.Module:
    """The model inside a wrapper (its parameters are sharded DTensors under fsdp)."""
    inner = step.module if hasattr(step, "module") and strategy(step) == "ddp" else step
    return inner.model if isinstance(inner, Step) else inner


def _fsdp_modules(step) -> list:
    from torch.distributed.fsdp import FSDPModule
    return [m for m in step.modules() if isinstance(m, FSDPModule)]


def _set_grad_sync(step, sync: bool) -> None:
    """Gradient accumulation without communication until the last micro-batch (DDP's no_sync)."""
    s = strategy(step)
    if s == "ddp":
        step.require_backward_grad_sync = sync
    elif s == "fsdp":
        step.set_requires_gradient_sync(sync)


@contextlib.contextmanager
def gathered(step):
    """Inside, an FSDP model holds its full parameters on every rank and forwards without
    communicating, so each rank may evaluate or sample on its own (different numbers of forwards,
    the model's submodules called directly). Costs a full copy of the weights per rank. Other
    strategies: nothing to do."""
    if strategy(step) != "fsdp":
        yield
        return
    mods = _fsdp_modules(step)
    for m in mods:
        m.set_reshard_after_forward(False, recurse=False)
        m.unshard()
    try:
        yield
    finally:
        for m in mods:
            m.reshard()
            if m is not step:  # the root keeps its default (not resharded after forward)
                m.set_reshard_after_forward(True, recurse=False)


# ----------------------------------------------------------------------------- full state

def _dcp_options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions
    return StateDictOptions(full_state_dict=True, **kw)


def state_dict(step, model: nn.Module | None = None) -> dict:
    """The model's full, unsharded state dict for a checkpoint. fsdp: gathered (a collective: call on
    every rank), complete on rank 0 and {} elsewhere. Otherwise model.state_dict()."""
    model = model if model is not None else unwrap(step)
    if strategy(step) != "fsdp":
        return model.state_dict()
    from torch.distributed.checkpoint.state_dict import get_model_state_dict
    return get_model_state_dict(model, options=_dcp_options(cpu_offload=True))


def load_state_dict(step, sd: dict, model: nn.Module | None = None) -> None:
    """Load a full state dict (as `state_dict` returns, on rank 0 at least) into the model."""
    model = model if model is not None else unwrap(step)
    if strategy(step) != "fsdp":
        model.load_state_dict(sd)
        return
    from torch.distributed.checkpoint.state_dict import set_model_state_dict
    set_model_state_dict(model, sd, options=_dcp_options(broadcast_from_rank0=True))


def _param_names(model: nn.Module) -> list[str]:
    """Names of the parameters in optimiser order (make_optimizer: model.parameters() with grad)."""
    return [n for n, p in model.named_parameters() if p.requires_grad]


def optimizer_state_dict(step, optimizer, model: nn.Module | None = None) -> dict:
    """The optimiser's state in torch's plain format (parameters numbered in model order), full
    and unsharded whatever the strategy, so a checkpoint resumes under any strategy and any
    number of processes. fsdp: a collective; complete on rank 0, {} elsewhere."""
    model = model if model is not None else unwrap(step)
    if strategy(step) != "fsdp":
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict
    sd = get_optimizer_state_dict(model, optimizer, options=_dcp_options(cpu_offload=True))
    if not sd:
        return {}
    index = {n: i for i, n in enumerate(_param_names(model))}
    return {"state": {index[n]: s for n, s in sd["state"].items()},
            "param_groups": [{**g, "params": [index[n] for n in g["params"]]} for g in sd["param_groups"]]}


def load_optimizer_state_dict(step, optimizer, sd: dict, model: nn.Module | None = None) -> None:
    """Load an optimiser state saved by `optimizer_state_dict` (or optimizer.state_dict())."""
    model = model if model is not None else unwrap(step)
    if strategy(step) != "fsdp":
        optimizer.load_state_dict(sd)
        return
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict
    names = _param_names(model)
    if sd:
        sd = {"state": {names[i]: s for i, s in sd["state"].items()},
              "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in sd["param_groups"]]}
    set_optimizer_state_dict(model, optimizer, sd, options=_dcp_options(broadcast_from_rank0=True))


def full_model(step) -> nn.Module:
    """The trained model as an ordinary module on every rank, for what follows training
    (evaluation, normalisation, saving). fsdp: the full weights gathered into a fresh copy (a
    collective; rank memory then holds the whole model). Otherwise the model itself."""
    model = unwrap(step)
    if strategy(step) != "fsdp":
        return model
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    sd = get_model_state_dict(model, options=_dcp_options())  # full tensors on every rank
    with torch.device("meta"):
        fresh = type(model)(model.config)
    fresh = fresh.to_empty(device=device())
    if hasattr(fresh, "tie_weights"):
        fresh.tie_weights()  # to_empty gives tied parameters separate storage
    _copy_module_swaps(model, fresh)
    fresh.load_state_dict(sd, strict=True)
    fresh.train(model.training)
    for name, buf in model.named_buffers():  # non-persistent buffers (rotary tables, masks) are not in sd
        if name not in sd:
            _set_buffer(fresh, name, buf.full_tensor() if hasattr(buf, "full_tensor") else buf)
    return fresh


def _copy_module_swaps(src: nn.Module, dst: nn.Module) -> None:
    """Carry over what was changed on the module objects after construction (fused GELU, dropout p)."""
    from instructkit.models import use_fast_kernels
    use_fast_kernels(dst)
    for (_, a), (_, b) in zip(src.named_modules(), dst.named_modules()):
        if isinstance(a, nn.Dropout) and isinstance(b, nn.Dropout):
            b.p = a.p
        if hasattr(a, "attention_dropout") and isinstance(getattr(a, "attention_dropout"), float):
            b.attention_dropout = a.attention_dropout
    for k, v in vars(src).items():  # plain attributes the stages set (e.g. instructkit_plain_forward)
        if k.startswith("instructkit_"):
            setattr(dst, k, v)


def _set_buffer(module: nn.Module, name: str, value: torch.Tensor) -> None:
    *path, leaf = name.split(".")
    for p in path:
        module = getattr(module, p)
    module._buffers[leaf] = value.detach().clone()


# ----------------------------------------------------------------------------- rank-0 run directory

class MainOnlyRunDir:
    """A RunDir whose writes happen on rank 0 only; `start` runs there, and its result (the state to
    resume from, or the exception: already complete, a config mismatch) reaches every rank."""

    def __init__(self, rundir):
        self._rundir = rundir

    def __getattr__(self, name):
        return getattr(self._rundir, name)

    def start(self):
        outcome = None
        if is_main():
            try:
                outcome = ("ok", self._rundir.start())
            except Exception as e:  # raised on every rank below
                outcome = ("error", e)
        kind, value = broadcast_object(outcome)
        if kind == "error":
            raise value
        return value

    def log(self, step: int, **metrics) -> None:
        if is_main():
            self._rundir.log(step, **metrics)

    def save_checkpoint(self, state: dict) -> None:
        if is_main():
            self._rundir.save_checkpoint(state)
        barrier()

    def finish(self, metrics: dict, extra: dict | None = None) -> None:
        if is_main():
            self._rundir.finish(metrics, extra)
        barrier()


def main_only(rundir):
    """`rundir` itself at world size 1; under torchrun, a view of it that writes on rank 0 only."""
    return MainOnlyRunDir(rundir) if is_distributed() else rundir


# ----------------------------------------------------------------------------- sampling a share

@contextlib.contextmanager
def sample_rows(generator: torch.Generator, lo: int, hi: int, n_rows: int, per_row: int):
    """Sample rows [lo, hi) of an n_rows batch with `generator` as if the whole batch were sampled
    in this process: the draws of rows before `lo` are skipped first, those of rows from `hi` on
    after. For a sampler that draws `per_row` uniforms per row up front, in row order (as
    instructkit.generation.generate does: one per (row, step)). CPU generators draw sequentially,
    so each process's rows get exactly the numbers a 1-process run gives them, and the generator
    ends where that run's does. World size 1 (lo = 0, hi = n_rows): nothing is skipped."""
    if lo:
        torch.rand(lo * per_row, generator=generator, device=generator.device)
    yield generator
    if n_rows - hi:
        torch.rand((n_rows - hi) * per_row, generator=generator, device=generator.device)
