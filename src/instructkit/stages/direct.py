"""Stage `dpo`: the direct-preference successors of RM + PPO (INSTRUCTGPT.md §4).

One loop for six losses (`loss=`): DPO (Rafailov et al. 2023), conservative DPO (Mitchell 2023),
IPO (Azar et al. 2023), SLiC-HF (Zhao et al. 2023), KTO (Ethayarajh et al. 2024) and ORPO (Hong
et al. 2024). The formulas are pure functions in `instructkit.losses`; this module feeds them.

- Data: K-way rankings (pairs are K = 2, ratings become ranks). One batch element is one prompt
  with ALL its K completions, each completion encoded once; every strictly ranked pair of the
  prompt enters the loss, which is averaged per prompt and then over prompts, as the InstructGPT
  reward model does (§3.5: shuffling pairs across batches overfits). KTO reads unpaired records,
  or splits rankings into desirable (rank 1) and undesirable (worst rank) with data.kto_from.
- Forward (`instructkit.shared_prefix`): a prompt is run once; its keys/values are then shared by
  all its completions, which run together in one padded pass (so chosen and rejected, or all K,
  cost one prompt encoding). The LM head is applied only at completion positions. Batches are
  built from length-sorted buckets so that little padding is run.
- Reference: the SFT checkpoint, frozen. Its log-probs are computed once per dataset and cached
  on disk under a key made of the data's, the model's and the encoding's hashes; reruns and
  resumed runs read the cache. ORPO needs no reference for training.

Shapes: G = prompts in a batch, K = completions per prompt (padded to the batch's largest),
N = completions in a batch, P / C = prompt / completion tokens, D = hidden size, V = vocabulary.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from instructkit import data as datalib
from instructkit import distributed as D
from instructkit import losses as L
from instructkit.config import DirectConfig
from instructkit.data.encode import encode_text, render_prompt
from instructkit.errors import InputError
from instructkit.models import count_parameters, load_causal_lm, save_model, set_dropout, set_threads
from instructkit.run import (RunDir, epoch_batches, progress, rng_state, seed_everything, setup_training)
from instructkit.shared_prefix import completion_logps, completion_logps_full
from instructkit.stages.direct_data import Group, encode_group, length_key, load_groups  # noqa: F401 (re-exported)

LOSSES = ("dpo", "cdpo", "ipo", "slic", "kto", "orpo")
CACHE_VERSION = 1
REFERENCE_PASSES = 0  # how many reference log-prob passes over a dataset this process ran (tests read it)


# ----------------------------------------------------------------------------- forward

def fast_path_ok(model, groups: list[Group], pad_id: int) -> bool:
    """Whether the shared-prefix, head-at-completions path gives this model's own log-probs (a model
    that scales or soft-caps its logits inside forward() would not)."""
    sample = groups[:2]
    prompts, comps, owner = flatten(sample)
    was = model.training
    model.eval()
    with torch.no_grad():
        fast, _ = completion_logps(model, prompts, comps, owner, pad_id, bucket_rows=0)
        bucketed, _ = completion_logps(model, prompts, comps, owner, pad_id, bucket_rows=2)
        full, _ = completion_logps_full(model, prompts, comps, owner, pad_id)
    model.train(was)
    return bool(torch.allclose(fast, full, atol=1e-3, rtol=1e-4) and torch.allclose(bucketed, full, atol=1e-3, rtol=1e-4))


def flatten(groups: list[Group], kl: bool = False) -> tuple[list[list[int]], list[list[int]], list[int]]:
    """(prompts, completions, owner): completion n belongs to prompts[owner[n]]. kl=True takes
    KTO's mismatched completions instead of the groups' own."""
    prompts, comps, owner = [], [], []
    for i, g in enumerate(groups):
        prompts.append(g.prompt)
        for c in ([g.kl_completion] if kl else g.completions):
            comps.append(c)
            owner.append(i)
    return prompts, comps, owner


def to_grid(flat: torch.Tensor, groups: list[Group], fill: float = 0.0) -> torch.Tensor:
    """Per-completion values (N,) in `flatten` order -> (G, K), `fill` in the padding slots."""
    K = max(len(g.completions) for g in groups)
    grid = torch.full((len(groups), K), fill, dtype=flat.dtype, device=flat.device)
    rows = torch.tensor([i for i, g in enumerate(groups) for _ in g.completions], device=flat.device)
    cols = torch.tensor([k for g in groups for k in range(len(g.completions))], device=flat.device)
    return grid.index_put((rows, cols), flat)


def grid_ranks(groups: list[Group]) -> tuple[torch.Tensor, torch.Tensor]:
    """ranks (G, K) long and valid (G, K) bool for mixed K."""
    K = max(len(g.completions) for g in groups)
    ranks = torch.tensor([g.ranks + [0] * (K - len(g.ranks)) for g in groups], dtype=torch.long)
    valid = torch.tensor([[k < len(g.ranks) for k in range(K)] for g in groups], dtype=torch.bool)
    return ranks, valid


# ----------------------------------------------------------------------------- losses on a batch

def preference_loss(cfg: DirectConfig, pi: torch.Tensor, ref: torch.Tensor | None, n_tokens: torch.Tensor,
                    ranks: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Pairwise losses (dpo, cdpo, ipo, slic, orpo) on K-way rankings.

    pi, ref: (G, K) log-prob sums over each completion's tokens (ref None for ORPO); n_tokens (G, K);
    ranks (G, K), 1 = best, equal = tie; valid (G, K). Every strictly ranked pair of a prompt is
    used; the loss is the mean over its pairs, then the mean over prompts with a pair (InstructGPT
    eq. 1's 1/C(K,2) normalisation). ORPO and SLiC add an SFT term: the mean NLL per token of each
    prompt's rank-1 completions over the batch. Stats are pooled over pairs, detached floats."""
    b, w, l = L.ranking_pairs(ranks, valid)  # (P,) each
    n = n_tokens.clamp_min(1).to(pi.dtype)
    if cfg.loss == "orpo":
        # ORPO odds from the MEAN per-token log-prob
        losses, s = L.orpo_loss(pi[b, w] / n[b, w], pi[b, l] / n[b, l], cfg.orpo_lambda)
        accuracy = s["accuracy"]
    elif cfg.loss == "ipo":  # IPO on length-averaged log-probs (Azar et al.; TRL does the same)
        losses, _ = L.ipo_loss(pi[b, w] / n[b, w], pi[b, l] / n[b, l], ref[b, w] / n[b, w], ref[b, l] / n[b, l],
                               cfg.tau)
    elif cfg.loss == "slic":
        losses, _ = L.slic_loss(pi[b, w], pi[b, l], ref[b, w], ref[b, l], cfg.beta, cfg.delta)
    else:
        smoothing = cfg.label_smoothing if cfg.loss == "cdpo" else 0.0
        losses, _ = L.dpo_loss(pi[b, w], pi[b, l], ref[b, w], ref[b, l], cfg.beta, smoothing)
    G = pi.shape[0]
    pairs_per_prompt = torch.zeros(G, dtype=pi.dtype, device=pi.device).index_add(0, b, torch.ones_like(losses))
    per_prompt = torch.zeros(G, dtype=losses.dtype, device=pi.device).index_add(0, b, losses)
    per_prompt = per_prompt / pairs_per_prompt.clamp_min(1)  # (G,)
    loss = L.masked_mean(per_prompt, pairs_per_prompt > 0)
    stats = {"n_pairs": int(b.numel())}
    if cfg.loss in ("orpo", "slic"):
        best = valid & (ranks == torch.where(valid, ranks, ranks.max() + 1).min(1, keepdim=True).values)  # (G, K)
        nll = -torch.where(best, pi, 0.0).sum() / torch.where(best, n_tokens, 0).sum().clamp_min(1)
        weight = 1.0 if cfg.loss == "orpo" else cfg.slic_sft_weight
        if weight:
            loss = loss + weight * nll
        stats["nll"] = nll.item()
    with torch.no_grad():
        if ref is not None:
            scale = cfg.tau if cfg.loss == "ipo" else cfg.beta
            chosen, rejected = scale * (pi[b, w] - ref[b, w]), scale * (pi[b, l] - ref[b, l])  # implicit rewards (P,)
            accuracy = (chosen > rejected).to(pi.dtype)
            stats.update(rewards_chosen=chosen.mean().item(), rewards_rejected=rejected.mean().item(),
                         reward_margin=(chosen - rejected).mean().item())
        stats.update(reward_accuracy=accuracy.mean().item(), logps_chosen=pi[b, w].mean().item(),
                     logps_rejected=pi[b, l].mean().item(), loss=loss.item())
    return loss, stats


def kto_batch_loss(cfg: DirectConfig, pi: torch.Tensor, ref: torch.Tensor, desirable: torch.Tensor,
                   pi_kl: torch.Tensor, ref_kl: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """KTO on a batch of unpaired examples, all (B,): the reference point z0 is the batch's mean
    log pi/ref on mismatched (x, y') pairs (clamped >= 0, detached); the loss is the mean over examples.
    reward_accuracy here: the fraction of examples on their side of z0 (desirable above it)."""
    z0 = L.kto_kl_estimate(pi_kl, ref_kl)
    losses, s = L.kto_loss(pi, ref, desirable, z0, cfg.beta, cfg.lambda_d, cfg.lambda_u)
    loss = losses.mean()
    with torch.no_grad():
        r, d = s["reward"], desirable.bool()
        right = torch.where(d, r > cfg.beta * z0, r < cfg.beta * z0).to(pi.dtype)
        stats = {"loss": loss.item(), "kl_z0": z0.item(), "reward_accuracy": right.mean().item(),
                 "n_desirable": int(d.sum())}
        for name, m in (("desirable", d), ("undesirable", ~d)):
            if m.any():
                stats[f"rewards_{name}"] = r[m].mean().item()
                stats[f"logps_{name}"] = pi[m].mean().item()
    return loss, stats


# ----------------------------------------------------------------------------- reference log-probs

@dataclass
class RefLogps:
    """Reference log-prob sums per completion, in `flatten(groups)` order; `kl` the same for KTO's
    mismatched completions (empty otherwise)."""
    sums: torch.Tensor
    kl: torch.Tensor


@torch.no_grad()
def compute_reference(reference, groups: list[Group], pad_id: int, batch_size: int, desc: str) -> RefLogps:
    global REFERENCE_PASSES
    REFERENCE_PASSES += 1
    reference.eval()
    offsets = [0]
    for g in groups:
        offsets.append(offsets[-1] + len(g.completions))
    sums = torch.zeros(offsets[-1])
    kl = torch.zeros(len(groups) if groups[0].kl_completion is not None else 0)
    order = sorted(range(len(groups)), key=lambda j: length_key(groups[j]))
    bar = progress(len(groups), 0, desc)
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        part = [groups[j] for j in idx]
        out, _ = completion_logps(reference, *flatten(part), pad_id)
        at = 0
        for j, g in zip(idx, part):
            sums[offsets[j]:offsets[j + 1]] = out[at:at + len(g.completions)].cpu()
            at += len(g.completions)
        if len(kl):
            kl[idx] = completion_logps(reference, *flatten(part, kl=True), pad_id)[0].cpu()
        bar.update(len(idx))
    bar.close()
    return RefLogps(sums, kl)


def reference_cache_key(data_sha: str, model_sha: str, cfg: DirectConfig, groups: list[Group]) -> str:
    """What the cached reference log-probs depend on: the data, the reference weights and the exact
    token ids fed (template, max_len, KTO split and mismatches all show up there)."""
    h = hashlib.sha256(f"v{CACHE_VERSION}|{data_sha}|{model_sha}".encode())
    h.update(json.dumps([[g.prompt, g.completions, g.kl_completion] for g in groups]).encode())
    return h.hexdigest()[:32]


def cached_reference(reference, groups, pad_id, batch_size, cache_dir: Path, key: str, desc: str) -> tuple[RefLogps, bool]:
    """(log-probs, whether they came from the cache). The file is written atomically."""
    path = cache_dir / f"ref_logps-{key}.pt"
    if path.exists():
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
            if saved.get("key") == key:
                return RefLogps(saved["sums"], saved["kl"]), True
        except Exception:  # a torn or foreign file: recompute and replace it
            pass
    ref = compute_reference(reference, groups, pad_id, batch_size, desc)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save({"key": key, "sums": ref.sums, "kl": ref.kl}, tmp)
    os.replace(tmp, path)
    return ref, False


# ----------------------------------------------------------------------------- one batch

def batch_loss(cfg: DirectConfig, model, groups: list[Group], idx: list[int], offsets: list[int],
               ref: RefLogps | None, pad_id: int) -> tuple[torch.Tensor, dict, int]:
    """Loss and stats of the batch `idx` (indices into groups), and the tokens it ran. `model` is the
    training wrapper (`distributed.wrap`): under torchrun each process runs its share of the prompts and
    the log-probs are gathered (with their gradients), so every process computes the batch's own loss."""
    part = [groups[j] for j in idx]
    prompts, comps, owner = flatten(part)
    pi_flat, n_flat = D.shard_forward(model, part, lambda m, gs: completion_logps(m, *flatten(gs), pad_id))  # (N,)
    tokens = sum(map(len, prompts)) + sum(map(len, comps))
    ref_flat = None
    if ref is not None:
        ref_flat = torch.cat([ref.sums[offsets[j]:offsets[j + 1]] for j in idx]).to(pi_flat.device)  # (N,)
    if cfg.loss == "kto":
        with torch.no_grad():  # z0 is detached: the mismatched pairs need no graph
            pi_kl = D.shard_forward(model, part, lambda m, gs: completion_logps(m, *flatten(gs, kl=True), pad_id)[0])
        tokens += sum(len(g.kl_completion) + len(g.prompt) for g in part)
        desirable = torch.tensor([g.desirable for g in part], device=pi_flat.device)
        loss, stats = kto_batch_loss(cfg, pi_flat, ref_flat, desirable, pi_kl, ref.kl[idx].to(pi_flat.device))
        return loss, stats, tokens
    ranks, valid = grid_ranks(part)
    loss, stats = preference_loss(cfg, to_grid(pi_flat, part), None if ref_flat is None else to_grid(ref_flat, part),
                                  to_grid(n_flat, part), ranks.to(pi_flat.device), valid.to(pi_flat.device))
    return loss, stats, tokens


def _offsets(groups: list[Group]) -> list[int]:
    out = [0]
    for g in groups:
        out.append(out[-1] + len(g.completions))
    return out


@torch.no_grad()
def evaluate_preferences(cfg: DirectConfig, model, groups: list[Group], ref: RefLogps | None, pad_id: int) -> dict:
    """Held-out loss and reward accuracy over the whole set at once (KTO: one z0 for the set)."""
    was = model.training
    model.eval()
    pis, kls = [], []
    for s in range(0, len(groups), 4 * cfg.batch_size):
        part = groups[s:s + 4 * cfg.batch_size]
        pis.append(completion_logps(model, *flatten(part), pad_id)[0])
        if cfg.loss == "kto":
            kls.append(completion_logps(model, *flatten(part, kl=True), pad_id)[0])
    model.train(was)
    pi = torch.cat(pis)
    if cfg.loss == "kto":
        desirable = torch.tensor([g.desirable for g in groups])
        _, stats = kto_batch_loss(cfg, pi, ref.sums, desirable, torch.cat(kls), ref.kl)
    else:
        n = torch.tensor([len(c) for g in groups for c in g.completions])
        ranks, valid = grid_ranks(groups)
        _, stats = preference_loss(cfg, to_grid(pi, groups), None if ref is None else to_grid(ref.sums, groups),
                                   to_grid(n, groups), ranks, valid)
    return {f"val_{k}": v for k, v in stats.items() if k != "n_pairs"}


@torch.no_grad()
def sample_eval(policy, reference, tok, prompts: list[list[int]], cfg: DirectConfig, scorer, prompt_texts) -> dict:
    """Sample one response per held-out prompt from the policy (temperature 1) and report
    KL(policy || reference) as the mean over samples of sum_t log pi/ref (the unbiased k1
    estimator, sequence level), the response length, and the scorer's mean if one is set."""
    from instructkit.generation import SamplingParams, generate, left_pad

    was = policy.training
    policy.eval()
    dev = next(policy.parameters()).device
    gen_seed = torch.Generator(device=dev).manual_seed(cfg.seed)
    params = SamplingParams(max_new_tokens=cfg.select.max_new_tokens)
    responses: list[list[int]] = []
    for s in range(0, len(prompts), 64):
        ids, mask = left_pad(prompts[s:s + 64], tok.pad_token_id)
        g = generate(policy, ids.to(dev), mask.to(dev), params, eos_token_id=tok.eos_token_id,
                     pad_token_id=tok.pad_token_id, generator=gen_seed)
        for row, n in zip(g.response_ids.tolist(), g.response_mask.sum(1).tolist()):
            responses.append(row[:n])
    keep = [i for i, r in enumerate(responses) if r]
    out = {"response_len": sum(map(len, responses)) / max(1, len(responses))}
    if reference is not None and keep:
        ps, rs, own = [prompts[i] for i in keep], [responses[i] for i in keep], list(range(len(keep)))
        pi, _ = completion_logps(policy, ps, rs, own, tok.pad_token_id)
        ref, _ = completion_logps(reference, ps, rs, own, tok.pad_token_id)
        out["kl"] = (pi - ref).mean().item()
    if scorer is not None:
        texts = [tok.decode([t for t in r if t != tok.eos_token_id], skip_special_tokens=True) for r in responses]
        scores = scorer(prompt_texts, texts)
        out["score"] = sum(scores) / max(1, len(scores))
    policy.train(was)
    return out


# ----------------------------------------------------------------------------- the stage

def _validate(cfg: DirectConfig) -> None:
    for name, value in (("model", cfg.model), ("data.train", cfg.data.train)):
        if not value:
            raise InputError("missing required field", field=name)
    checks = [
        (cfg.loss in LOSSES, "loss", f"expected one of {list(LOSSES)}"),
        (cfg.beta > 0, "beta", "must be > 0"),
        (0 <= cfg.label_smoothing < 0.5, "label_smoothing", "must be in [0, 0.5)"),
        (cfg.tau > 0, "tau", "must be > 0"),
        (cfg.delta >= 0, "delta", "must be >= 0"),
        (cfg.slic_sft_weight >= 0, "slic_sft_weight", "must be >= 0"),
        (cfg.lambda_d > 0 and cfg.lambda_u > 0, "lambda_d", "lambda_d and lambda_u must be > 0"),
        (cfg.orpo_lambda >= 0, "orpo_lambda", "must be >= 0"),
        (cfg.epochs >= 1, "epochs", "must be >= 1"),
        (cfg.batch_size >= 1, "batch_size", "must be >= 1"),
        (cfg.data.max_len >= 2, "data.max_len", "must be >= 2"),
        (cfg.select.max_new_tokens >= 1, "select.max_new_tokens", "must be >= 1"),
        (cfg.dist.micro_batch_size == 0, "dist.micro_batch_size", "not applied by dpo (the loss needs the whole "
                                                                  "batch's log-probs): lower batch_size instead"),
    ]
    for ok, name, msg in checks:
        if not ok:
            raise InputError(msg, field=name)
    if cfg.loss == "kto" and cfg.batch_size < 2:
        raise InputError("KTO estimates its reference point from the batch: use batch_size >= 2", field="batch_size")
    if cfg.select.by == "score" and not cfg.select.scorer:
        raise InputError("select.by=score needs select.scorer", field="select.scorer")
    if cfg.select.by == "score" and not (cfg.select.prompts or cfg.data.val):
        raise InputError("select.by=score needs select.prompts (or data.val)", field="select.prompts")
    if cfg.select.by in ("loss", "accuracy") and not cfg.data.val:
        raise InputError(f"select.by={cfg.select.by} needs held-out preferences", field="data.val")


def _cache_dir(cfg: DirectConfig) -> Path:
    if cfg.ref_cache:
        return Path(cfg.ref_cache)
    root = os.environ.get("INSTRUCTKIT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "instructkit")
    return Path(root) / "ref_logps"


def run(cfg: DirectConfig) -> dict:
    threads = set_threads(cfg.threads)
    D.setup(cfg.dist.timeout_minutes)  # under torchrun: join the other processes (else nothing)
    _validate(cfg)
    # everything the user gave is read and checked before the output directory exists
    model, tok = load_causal_lm(cfg.model, dropout=cfg.dropout)
    pad = tok.pad_token_id
    # no sequence longer than the model's position table
    max_len = min(cfg.data.max_len, getattr(model.config, "max_position_embeddings", None) or cfg.data.max_len)
    groups, info = load_groups(cfg.data.train, cfg, tok, "data.train", max_len)
    val_groups = load_groups(cfg.data.val, cfg, tok, "data.val", max_len)[0] if cfg.data.val else []
    if cfg.select.prompts:
        eval_texts = [p.prompt for p in datalib.load(cfg.select.prompts, "prompt")]
    else:
        eval_texts = list(dict.fromkeys(r.prompt for r in (datalib.load(cfg.data.val, "unpaired")
                          if cfg.loss == "kto" and cfg.kto_from == "unpaired" else
                          datalib.load(cfg.data.val, "ranking")))) if cfg.data.val else []
    eval_texts = [render_prompt(p, tok, cfg.template) for p in eval_texts[:cfg.select.n_prompts]]
    eval_prompts = [(encode_text(tok, t) if t else [])[-max(1, max_len - cfg.select.max_new_tokens):]
                    or [tok.eos_token_id] for t in eval_texts]
    scorer = None
    if cfg.select.scorer:
        from instructkit.scoring import get_scorer
        scorer = get_scorer(cfg.select.scorer)
    sample_every_eval = bool(eval_prompts) and (cfg.select.kl or scorer is not None)
    needs_reference = cfg.loss != "orpo" or (sample_every_eval and cfg.select.kl)
    reference = copy.deepcopy(model).eval().requires_grad_(False) if needs_reference else None
    if reference is not None:
        set_dropout(reference, 0.0)

    rundir = D.main_only(RunDir(cfg.out, "dpo", cfg, {"model": cfg.model, "data.train": cfg.data.train,
                                                      "data.val": cfg.data.val, "select.prompts": cfg.select.prompts}))
    state = rundir.start()
    seed_everything(cfg.seed)
    fast = fast_path_ok(model, groups, pad)
    forward = "shared-prefix" if fast else "full"
    for m in (model, reference):  # a model that changes its logits inside forward() takes the plain route
        if m is not None:
            m.instructkit_plain_forward = not fast

    # reference log-probs: once per dataset, cached on disk
    ref_info = {"forward": forward}
    ref = val_ref = None
    if cfg.loss != "orpo":
        cache_dir = _cache_dir(cfg)
        model_sha = rundir.inputs["model"]["sha256"]
        key = reference_cache_key(rundir.inputs["data.train"]["sha256"], model_sha, cfg, groups)
        # under torchrun rank 0 computes (or reads) them and hands them to the others
        ref, hit = D.broadcast_object(cached_reference(reference, groups, pad, 4 * cfg.batch_size, cache_dir, key,
                                                       "reference") if D.is_main() else None)
        ref_info.update(cache=str(cache_dir / f"ref_logps-{key}.pt"), cache_hit=hit)
        if val_groups:
            vkey = reference_cache_key(rundir.inputs["data.val"]["sha256"], model_sha, cfg, val_groups)
            val_ref, vhit = D.broadcast_object(cached_reference(reference, val_groups, pad, 4 * cfg.batch_size,
                                                                cache_dir, vkey, "reference (val)") if D.is_main() else None)
            ref_info["val_cache_hit"] = vhit
    if not (sample_every_eval and cfg.select.kl):
        reference = None  # training reads the cache; free the copy

    per_epoch = math.ceil(len(groups) / cfg.batch_size)
    total = cfg.epochs * per_epoch
    every = cfg.select.every or per_epoch
    n_seq = sum(len(g.completions) for g in groups)
    print(f"dpo: loss={cfg.loss} {count_parameters(model) / 1e6:.2f}M parameters, {info['records']} records -> "
          f"{len(groups)} {'examples' if cfg.loss == 'kto' else 'prompts'} ({n_seq} completions; "
          f"{info['skipped_no_pair']} without a ranked pair skipped, {info['truncated']} truncated to "
          f"{max_len} tokens), {cfg.epochs} epochs = {total} steps x {cfg.batch_size}, select by "
          f"{cfg.select.by}, reference {'cached' if ref_info.get('cache_hit') else 'computed' if ref else 'none'}, "
          f"{forward} forward, {threads} thread(s), seed {cfg.seed}"
          + D.processes_note(cfg.dist.strategy))

    wrapped, optimizer, scheduler = setup_training(model, cfg.dist, cfg.optim, total, state)
    start, best, best_state, loss_ema = 0, None, None, None
    if state:
        start, best, best_state, loss_ema = state["step"], state["best"], state["best_state"], state["loss_ema"]
        print(f"dpo: resuming from step {start}")

    offsets, lengths = _offsets(groups), [length_key(g) for g in groups]
    model.train()
    bar = progress(total, start, f"dpo ({cfg.loss})")
    t0, cpu0, tokens, last_eval = time.time(), time.process_time(), 0, {}
    batches, batches_epoch = None, -1
    for step in range(start, total):
        epoch, i = divmod(step, per_epoch)
        if epoch != batches_epoch:
            batches, batches_epoch = epoch_batches(cfg.seed, epoch, lengths, cfg.batch_size, cfg.group_by_length), epoch
        # forward: policy log-probs of every completion in the batch; reference from the cache
        loss, stats, n_tok = batch_loss(cfg, wrapped, groups, batches[i], offsets, ref, pad)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip or math.inf)
        optimizer.step()
        scheduler.step()
        tokens += n_tok
        loss_ema = stats["loss"] if loss_ema is None else 0.9 * loss_ema + 0.1 * stats["loss"]
        done = step + 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss_ema:.3f}", acc=f"{stats['reward_accuracy']:.2f}",
                        **({"margin": f"{stats['reward_margin']:.3f}"} if "reward_margin" in stats else {}),
                        **({"logp_w": f"{stats['logps_chosen']:.1f}"} if "logps_chosen" in stats else {}))
        record = {**stats, "lr": scheduler.get_last_lr()[0], "grad_norm": gnorm.item(), "epoch": done / per_epoch}
        evaluated = done % every == 0 or done == total
        if evaluated:
            # held-out evaluation and selection (every process evaluates the same thing: the same choice)
            with D.gathered(wrapped):
                if val_groups:
                    record.update(evaluate_preferences(cfg, model, val_groups, val_ref, pad))
                if sample_every_eval:
                    record.update({f"val_{k}": v for k, v in
                                   sample_eval(model, reference, tok, eval_prompts, cfg, scorer, eval_texts).items()})
            last_eval = {k: v for k, v in record.items() if k.startswith("val_")}
            value = {"loss": -record.get("val_loss", 0.0), "accuracy": record.get("val_reward_accuracy"),
                     "score": record.get("val_score"), "last": done}[cfg.select.by]
            if cfg.select.by != "last" and (best is None or value > best["value"]):
                best = {"value": value, "step": done, "metrics": last_eval}
                best_state = copy.deepcopy(D.state_dict(wrapped))
        if done % cfg.log_every == 0 or done == total or evaluated:
            rundir.log(done, **record, tokens_per_s=tokens / max(1e-9, time.time() - t0))
        if done % cfg.save_every == 0 and done < total:
            rundir.save_checkpoint({"step": done, "model": D.state_dict(wrapped),
                                    "optimizer": D.optimizer_state_dict(wrapped, optimizer),
                                    "scheduler": scheduler.state_dict(), "rng": rng_state(), "best": best,
                                    "best_state": best_state, "loss_ema": loss_ema})
    bar.close()
    train_seconds = time.time() - t0  # the loop (with its evaluations), not loading, reference or saving
    train_cpu_seconds = time.process_time() - cpu0  # the same span in CPU time (robust on a shared machine)
    selected, final_eval = total, last_eval
    if best_state is not None:
        D.load_state_dict(wrapped, best_state)
        selected, final_eval = best["step"], best["metrics"]
    metrics = {"train_loss": loss_ema, "tokens_per_s": tokens / max(1e-9, train_seconds), "train_seconds": train_seconds,
               "train_cpu_seconds": train_cpu_seconds,
               "selected_step": selected, **final_eval}
    model = D.full_model(wrapped)  # fsdp: the whole model gathered on every process; otherwise `model` itself
    set_dropout(model, 0.0)
    if D.is_main():
        save_model(model, tok, cfg.out)
    rundir.finish(metrics, extra={"reference": ref_info, "data": {"train": info}})
    print(f"dpo: done -> {cfg.out} (step {selected} of {total}) " +
          " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, float)))
    return metrics
