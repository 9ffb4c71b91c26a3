"""Stage `rm`: a reward model on K-way rankings (InstructGPT §3.5).

The SFT model with its LM head replaced by a scalar head. One batch element is one prompt with
all its K completions: the K sequences of every prompt in the batch go through the model in one
forward pass (sum of K rows, not 2 x C(K,2); cut into groups of similar length so that little
padding is computed, `bucket_rows`), the scores are reshaped to (B, Kmax) with a
validity mask (mixed K), and the loss is -1/P sum over the prompt's P ranked pairs of
log sigmoid(r_w - r_l), ties dropped, then the mean over prompts. Shuffling the pairs of one prompt
across batches overfits (paper §3.5); re-encoding every completion K-1 times is what makes the
pairwise trainers slow. One epoch, cosine to 10%. After training, a bias (or gain and bias) is
stored so that demonstrations (or reference samples) are normalised, and the model is evaluated
on held-out rankings (see rm_eval)."""
from __future__ import annotations

import copy
import json
import math
import time
from pathlib import Path

import torch

from instructkit import data as datalib
from instructkit import distributed as D
from instructkit.config import RMConfig
from instructkit.data.encode import length_buckets, render_prompt, right_pad
from instructkit.data.jsonl import split_paths
from instructkit.errors import InputError
from instructkit.losses import ranking_loss
from instructkit.models import count_parameters, load_tokenizer, save_model, set_dropout, set_threads
from instructkit.reward import (META_KEY, Normalization, check_same_tokenizer,
                                create_reward_model, encode_response, reward_scores, score_sequences,
                                tokenizer_fingerprint, max_positions, quiet_transformers)
from instructkit.run import (RunDir, epoch_permutation, progress, rng_state, seed_everything, setup_training)
from instructkit.stages.rm_eval import (EncodedRanking, attach_gold, encode_rankings, evaluate, format_report, load_rankings,
                                        rankable, score_rankings)


# ---------------------------------------------------------------------------- batching

def collate_rankings(items: list[EncodedRanking], pad_id: int, bucket_rows: int = 0) -> dict:
    """All completions of all prompts as N = sum K rows, each row forwarded once.
    -> buckets: [(input_ids, attention_mask, rows)] right-padded groups of rows, `rows` the flat row
    indices they hold; ranks (B, Kmax) long; valid (B, Kmax) bool; tokens: real tokens; n_rows.
    bucket_rows = 0: one group in input order (one padded forward pass); else the rows sorted by
    length and cut into groups of that many, each padded only to its own longest row."""
    B, kmax = len(items), max(len(it.seqs) for it in items)
    seqs = [s for it in items for s in it.seqs]
    buckets = []
    for g in length_buckets([len(s) for s in seqs], bucket_rows):
        ids, mask = right_pad([seqs[i] for i in g], pad_id)  # (n, T_g)
        buckets.append((ids, mask, torch.tensor(g, dtype=torch.long)))
    ranks = torch.zeros((B, kmax), dtype=torch.long)
    valid = torch.zeros((B, kmax), dtype=torch.bool)
    for b, it in enumerate(items):
        ranks[b, : len(it.ranks)] = torch.tensor(it.ranks)
        valid[b, : len(it.ranks)] = True
    return {"buckets": buckets, "ranks": ranks, "valid": valid, "n_rows": len(seqs),
            "tokens": sum(len(s) for s in seqs), "padded_tokens": sum(int(ids.numel()) for ids, _, _ in buckets)}


def ranking_scores(model, batch: dict) -> torch.Tensor:
    """One forward pass per bucket, every row once -> scores (B, Kmax); invalid slots hold 0."""
    parts = [(rows, reward_scores(model, ids, mask)) for ids, mask, rows in batch["buckets"]]
    flat = torch.cat([s for _, s in parts])
    rows = torch.cat([r for r, _ in parts])
    flat = torch.empty_like(flat).index_copy(0, rows, flat)  # back to input order: (N,)
    # valid is row-major and each row's completions come first, the order of the flat rows
    return torch.zeros(batch["valid"].shape, dtype=flat.dtype).masked_scatter(batch["valid"], flat)  # (B, Kmax)


def forward_backward(model, items: list[EncodedRanking], pad_id: int, micro_batch_size: int = 0,
                     bucket_rows: int = 0) -> dict:
    """Loss of one optimiser step's prompts, gradients accumulated. Every item has >= 1 ranked pair,
    so the batch loss (mean over prompts) is the size-weighted sum of the micro-batch losses.
    `model` may be the training wrapper (distributed.wrap): under torchrun each process runs its
    share of `items` (the whole batch) and the stats returned are the whole batch's."""
    if micro_batch_size and micro_batch_size < len(items):
        # whole prompts per micro-batch; similar lengths together cut padding
        items = sorted(items, key=lambda it: max(len(s) for s in it.seqs))
    else:
        micro_batch_size = 0
    sums = {"loss": 0.0, "correct": 0.0, "margin": 0.0, "n_pairs": 0, "rows": 0, "tokens": 0}
    for chunk, live in D.micro_batches(model, items, micro_batch_size):
        batch = collate_rankings(chunk, pad_id, bucket_rows)
        scores = D.call(model, ranking_scores, batch)  # (b, Kmax)
        loss, stats = ranking_loss(scores, batch["ranks"], batch["valid"])
        D.backward(loss, live * len(chunk) / len(items))
        if live:
            sums["loss"] += loss.item() * len(chunk)
            sums["correct"] += float(stats["accuracy"]) * stats["n_pairs"]
            sums["margin"] += float(stats["margin"]) * stats["n_pairs"]
            sums["n_pairs"] += stats["n_pairs"]
            sums["rows"] += batch["n_rows"]
            sums["tokens"] += batch["tokens"]
    sums = D.all_reduce_sum(sums)  # the whole batch's (under torchrun)
    n_pairs = int(sums["n_pairs"])
    return {"loss": sums["loss"] / len(items), "accuracy": sums["correct"] / max(1, n_pairs),
            "margin": sums["margin"] / max(1, n_pairs), "n_pairs": n_pairs, "rows": int(sums["rows"]),
            "tokens": int(sums["tokens"])}


# ---------------------------------------------------------------------------- inputs

def split_by_prompt(rankings: list, fraction: float, seed: int) -> tuple[list, list]:
    """Hold out a share of the distinct prompts (all of a prompt's rankings on one side)."""
    if fraction <= 0:
        return rankings, []
    prompts = sorted({r.prompt for r in rankings})
    if len(prompts) < 2:
        return rankings, []
    g = torch.Generator().manual_seed(seed * 7919 + 17)
    perm = torch.randperm(len(prompts), generator=g).tolist()
    n_val = min(len(prompts) - 1, max(1, round(len(prompts) * fraction)))
    held = {prompts[i] for i in perm[:n_val]}
    return [r for r in rankings if r.prompt not in held], [r for r in rankings if r.prompt in held]


def recorded_demonstrations(model_dir: str) -> str:
    """The demonstrations an SFT run recorded in its instructkit.json, or "". A relative path is as
    the SFT saw it from where it ran: tried from here, then from each directory above the model (a
    pipeline run from another directory); with a recorded digest, only the same file is taken."""
    from instructkit.run import file_sha256

    try:
        meta = json.loads((Path(model_dir) / "instructkit.json").read_text())
        entry = meta["inputs"]["data.train"] if meta.get("stage") == "sft" else {}
        recorded, digest = entry.get("path") or "", entry.get("sha256")
    except (OSError, json.JSONDecodeError, KeyError, TypeError, AttributeError):
        return ""
    if not isinstance(recorded, str) or not recorded:
        return ""
    tries = [Path(recorded)]
    if not Path(recorded).is_absolute():
        tries += [d / recorded for d in Path(model_dir).resolve().parents]
    for candidate in tries:
        if candidate.is_file() and (not digest or file_sha256(candidate) == digest):
            return str(candidate)
    return ""


def normalization_texts(cfg: RMConfig, train_rankings: list) -> tuple[list, str]:
    """-> ([(prompt, messages, completion)], source) the normalisation is fit on."""
    if cfg.normalize.kind == "none":
        return [], ""
    path = cfg.normalize.data
    if not path and cfg.normalize.kind == "demonstrations":
        path = recorded_demonstrations(cfg.model)
    if path:
        demos = datalib.load(path, "demonstration")
        return [(d.prompt, d.messages[:-1] if d.messages else None, d.completion) for d in demos], path
    if cfg.normalize.kind == "reference":
        raise InputError("normalize.kind=reference needs normalize.data (reference samples, e.g. from "
                         "`instructkit sample`)", field="normalize.data")
    best = [(r.prompt, None, r.completions[r.ranks.index(min(r.ranks))]) for r in train_rankings]
    return best, "top-ranked completions of data.train (no demonstrations given)"


# ---------------------------------------------------------------------------- stage

def compare_on_latest(rankings: list, scores: list, previous: str, data: str, batch_size: int) -> dict:
    """This RM and an earlier one on the same held-out rankings of the newest samples: is the new RM
    ahead of the policy those samples came from? -> the figures of both, for gates.latest."""
    from instructkit.stages.rm_eval import score_with

    new, old = evaluate(rankings, scores), evaluate(rankings, score_with(previous, rankings, batch_size))
    out = {"data": data, "previous": previous, "n_prompts": new["n_prompts"], "n_pairs": new["n_pairs"],
           "accuracy": new["accuracy"], "previous_accuracy": old["accuracy"],
           "bon_gain": new["best_of_k"]["bon_gain"], "previous_bon_gain": old["best_of_k"]["bon_gain"],
           "judge": new["best_of_k"]["judge"]}
    if "gold" in new:
        out.update(gold_accuracy=new["gold"]["accuracy"], previous_gold_accuracy=old["gold"]["accuracy"])
    return out


def run(cfg: RMConfig) -> dict:
    threads = set_threads(cfg.threads)
    D.setup(cfg.dist.timeout_minutes)  # under torchrun: join the other processes (else nothing)
    for name, value in (("model", cfg.model), ("data.train", cfg.data.train)):
        if not value:
            raise InputError("missing required field", field=name)
    for name, value in (("epochs", cfg.epochs), ("batch_size", cfg.batch_size), ("data.max_len", cfg.data.max_len)):
        if value < 1:
            raise InputError("expected an integer >= 1", field=name)
    if not 0 <= cfg.data.val_fraction < 1:
        raise InputError("expected a number in [0, 1)", field="data.val_fraction")
    if cfg.micro_batch_size < 0 or cfg.eval.bins < 1 or cfg.eval.batch_size < 1:
        raise InputError("expected micro_batch_size >= 0, eval.bins >= 1, eval.batch_size >= 1",
                         field="micro_batch_size")
    if not 0 <= cfg.eval.agreement <= 1:
        raise InputError("expected a number from 0 to 1", field="eval.agreement")
    if cfg.dist.micro_batch_size:
        raise InputError("the reward model's micro-batches are set by `micro_batch_size`", field="dist.micro_batch_size")

    # validate every input before the output directory exists
    train_files = split_paths(cfg.data.train)  # several rankings files are concatenated (iterated rounds)
    per_file = [load_rankings(f) for f in train_files]  # each once; the last one is the newest samples
    train_all, flagged, tied = rankable([r for records in per_file for r in records])
    val_all, vflagged, vtied = rankable(load_rankings(cfg.data.val)) if cfg.data.val else ([], 0, 0)
    if not train_all:
        raise InputError("no record has a ranked pair (all not_rankable or tied)", path=", ".join(train_files))
    if cfg.data.val:
        train, val = train_all, val_all
    else:
        train, val = split_by_prompt(train_all, cfg.data.val_fraction, cfg.seed)
    if cfg.select.by == "accuracy" and not val:
        raise InputError("select.by=accuracy needs held-out rankings (data.val or data.val_fraction > 0)",
                         field="select.by")
    if cfg.eval.gold and val:
        attach_gold(val, cfg.eval.gold)
    latest = []  # held-out records of the last data.train file: the newest policy's samples (eval.previous)
    if cfg.eval.previous:
        if not (Path(cfg.eval.previous) / "config.json").is_file():
            raise InputError("no reward model here (config.json missing)", path=cfg.eval.previous, field="eval.previous")
        if cfg.data.val:
            latest = list(range(len(val)))
        else:
            newest = {id(r) for r in per_file[-1]}
            latest = [i for i, r in enumerate(val) if id(r) in newest]
    norm_items, norm_source = normalization_texts(cfg, train)
    model, tok, fresh_head = create_reward_model(cfg.model, seed=cfg.seed, dropout=cfg.dropout)
    if cfg.policy:
        check_same_tokenizer(tok, load_tokenizer(cfg.policy), cfg.policy)
    max_len = cfg.data.max_len
    limit = max_positions(model.config)
    if limit and max_len > limit:
        print(f"rm: data.max_len {max_len} > the model's {limit} positions; using {limit}")
        max_len = limit
    items, n_trunc = encode_rankings(train, tok, cfg.template, max_len, cfg.append_eos)
    val_items, _ = encode_rankings(val, tok, cfg.template, max_len, cfg.append_eos)

    rundir = D.main_only(RunDir(cfg.out, "rm", cfg, {"model": cfg.model, "data.train": train_files,
                                                     "data.val": cfg.data.val, "normalize.data": cfg.normalize.data}))
    state = rundir.start()
    seed_everything(cfg.seed)
    per_epoch = math.ceil(len(items) / cfg.batch_size)
    total = cfg.epochs * per_epoch
    n_pairs_total = sum(len(r.pairs()) for r in train)
    ks = sorted({r.k for r in train})
    print(f"rm: {count_parameters(model) / 1e6:.2f}M parameters ({'new head' if fresh_head else 'continuing an RM'}), "
          f"{len(train)} training rankings of {len({r.prompt for r in train})} prompts"
          + (f" from {len(train_files)} files" if len(train_files) > 1 else "") + f" (K {ks[0]}-{ks[-1]}, "
          f"{n_pairs_total} ranked pairs, {n_trunc} sequences "
          f"truncated to {max_len} tokens), {len(val)} held out; skipped {flagged + vflagged} not_rankable and "
          f"{tied + vtied} all-tied records; {cfg.epochs} epoch(s) = {total} steps x {cfg.batch_size} prompts, "
          f"{threads} thread(s), seed {cfg.seed}"
          + D.processes_note(cfg.dist.strategy))

    wrapped, optimizer, scheduler = setup_training(model, cfg.dist, cfg.optim, total, state)
    start, best, best_state, train_seconds, acc_ema = 0, None, None, 0.0, None
    if state:
        start, best, best_state = state["step"], state["best"], state["best_state"]
        train_seconds, acc_ema = state["train_seconds"], state["acc_ema"]
        print(f"rm: resuming from step {start}")

    model.train()
    bar = progress(total, start, "rm")
    t0, rows = time.time(), 0
    every = cfg.select.every or total
    stats = {}
    for step in range(start, total):
        epoch, i = divmod(step, per_epoch)
        order = epoch_permutation(cfg.seed, epoch, len(items))
        batch_items = [items[j] for j in order[i * cfg.batch_size:(i + 1) * cfg.batch_size]]
        optimizer.zero_grad(set_to_none=True)
        # forward: all K completions of every prompt in one pass; InstructGPT eq. 1 over all ranked pairs
        stats = forward_backward(wrapped, batch_items, tok.pad_token_id, cfg.micro_batch_size, cfg.bucket_rows)
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip or math.inf)
        optimizer.step()
        scheduler.step()
        rows += stats["rows"]
        acc_ema = stats["accuracy"] if acc_ema is None else 0.9 * acc_ema + 0.1 * stats["accuracy"]
        done = step + 1
        bar.update(1)
        bar.set_postfix(loss=f"{stats['loss']:.3f}", acc=f"{acc_ema:.3f}")
        record = {"loss": stats["loss"], "accuracy": stats["accuracy"], "margin": stats["margin"],
                  "n_pairs": stats["n_pairs"], "lr": scheduler.get_last_lr()[0], "grad_norm": gnorm.item(),
                  "epoch": done / per_epoch}
        if cfg.select.by == "accuracy" and (done % every == 0 or done == total):
            # select (every process evaluates the same thing, so all make the same choice)
            with D.gathered(wrapped):
                report = evaluate(val, score_rankings(model, val_items, tok.pad_token_id, cfg.eval.batch_size))
            record["val_accuracy"] = report["accuracy"]
            if best is None or report["accuracy"] > best["value"]:
                best = {"value": report["accuracy"], "step": done}
                best_state = copy.deepcopy(D.state_dict(wrapped))
            model.train()
        if done % cfg.log_every == 0 or done == total or "val_accuracy" in record:
            rundir.log(done, **record, rows_per_s=rows / max(1e-9, time.time() - t0))
        if done % cfg.save_every == 0 and done < total:
            rundir.save_checkpoint({"step": done, "model": D.state_dict(wrapped),
                                    "optimizer": D.optimizer_state_dict(wrapped, optimizer),
                                    "scheduler": scheduler.state_dict(), "rng": rng_state(), "best": best,
                                    "best_state": best_state, "acc_ema": acc_ema,
                                    "train_seconds": train_seconds + time.time() - t0})
    bar.close()
    train_seconds += time.time() - t0
    selected = total
    if best_state is not None:
        D.load_state_dict(wrapped, best_state)
        selected = best["step"]
    model = D.full_model(wrapped)  # fsdp: the whole model gathered on every process; otherwise `model` itself
    set_dropout(model, 0.0)
    model.eval()

    # normalise: fit gain and bias on demonstrations / reference samples, store them in config.json
    norm_seqs = [encode_response(tok, render_prompt(p, tok, cfg.template, msgs), c, max_len, cfg.append_eos)[0]
                 for p, msgs, c in norm_items]
    raw = score_sequences(model, norm_seqs, tok.pad_token_id, cfg.eval.batch_size) if norm_seqs else []
    norm = Normalization.fit(cfg.normalize.kind, raw, norm_source)
    reward_meta = {"normalization": norm.__dict__, "template": {"kind": cfg.template.kind, "system": cfg.template.system},
                   "max_len": max_len, "append_eos": cfg.append_eos, "tokenizer_sha256": tokenizer_fingerprint(tok)}
    setattr(model.config, META_KEY, reward_meta)

    # evaluate on held-out rankings
    metrics = {"train_loss": stats.get("loss"), "train_accuracy": acc_ema, "train_seconds": train_seconds,
               "rows_per_s": rows / max(1e-9, train_seconds), "selected_step": selected}
    report = None
    if val:
        val_scores = score_rankings(model, val_items, tok.pad_token_id, cfg.eval.batch_size)
        report = evaluate(val, val_scores, cfg.eval.agreement, cfg.eval.bins)
        metrics.update(val_accuracy=report["accuracy"], val_loss=report["loss"], val_ece=report["calibration"]["ece"])
        if "gold" in report:
            metrics["val_gold_accuracy"] = report["gold"]["accuracy"]
        if "agreement" in report:
            metrics["agreement"] = report["agreement"]["value"]
    if D.is_main():
        with quiet_transformers():
            save_model(model, tok, cfg.out)
    # the gate PPO checks before it starts (stages/ppo.py check_gate): best-of-K by this RM beats random
    gates = {k: report["best_of_k"][k] for k in ("bon_gain", "bon_n", "judge")} if report else {}
    if latest and D.is_main():
        gates["latest"] = compare_on_latest([val[i] for i in latest], [val_scores[i] for i in latest],
                                            cfg.eval.previous, train_files[-1] if not cfg.data.val else cfg.data.val,
                                            cfg.eval.batch_size)
    rundir.finish(metrics, {"reward": reward_meta, "eval": report, "gates": gates})
    print(f"rm: normalisation {norm.kind}: gain {norm.gain:.4g}, bias {norm.bias:+.4g} on {norm.n} samples"
          + (f" ({norm.source})" if norm.source else ""))
    if report:
        print(format_report(report, "rm: held out"))
    if "latest" in gates:
        g = gates["latest"]
        print(f"rm: on {g['n_prompts']} held-out prompts of {g['data']} ({g['n_pairs']} pairs), the previous RM -> this "
              f"one: accuracy {g['previous_accuracy']:.3f} -> {g['accuracy']:.3f}" +
              (f", vs gold {g['previous_gold_accuracy']:.3f} -> {g['gold_accuracy']:.3f}" if "gold_accuracy" in g else "") +
              f", best-of-K gain {g['previous_bon_gain']:+.4f} -> {g['bon_gain']:+.4f}")
    else:
        print("rm: no held-out rankings (data.val empty, data.val_fraction 0): no evaluation")
    print(f"rm: done -> {cfg.out} (step {selected} of {total}, {train_seconds:.1f}s training) " +
          " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, float)))
    return metrics
