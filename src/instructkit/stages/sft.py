"""Stage `sft`: supervised fine-tuning on demonstrations (InstructGPT §3.5 / App. C.1).

Loss on completion tokens only; cosine decay to 10% of peak with no warm-up; residual dropout.
Validation loss overfits after about one epoch while quality keeps rising, so the output can be
selected by a scorer (gold utility in the sandbox, a reward model otherwise) instead of by loss."""
from __future__ import annotations

import copy
import math
import time

import torch

from instructkit import data as datalib
from instructkit import distributed as D
from instructkit.config import SFTConfig
from instructkit.data.encode import IGNORE, collate_right, encode_demonstrations, render_prompt
from instructkit.errors import InputError
from instructkit.models import count_parameters, load_causal_lm, max_positions, save_model, set_dropout, set_threads
from instructkit.run import (RunDir, epoch_batches, progress, rng_state, seed_everything, setup_training)


def completion_loss(model, batch: dict) -> torch.Tensor:
    """Mean cross-entropy over completion tokens, with the LM head applied only at those positions:
    the prompt's logits are never computed (for a 50k vocabulary that is most of the head's cost)."""
    labels = batch["labels"][:, 1:]  # (B, T-1) next-token targets
    where = labels != -100  # (B, T-1)
    if getattr(model.config, "final_logit_softcapping", None):  # models that post-process logits
        return model(**batch).loss
    hidden = model.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                              use_cache=False).last_hidden_state  # (B, T, C)
    logits = model.get_output_embeddings()(hidden[:, :-1][where])  # (M, V), M = completion tokens
    return torch.nn.functional.cross_entropy(logits.float(), labels[where])


@torch.no_grad()
def demo_loss(model, examples, pad_id: int, batch_size: int = 32) -> float:
    """Mean completion-token loss over examples (dropout off)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(examples), batch_size):
        batch = collate_right(examples[i:i + batch_size], pad_id)
        n = int((batch["labels"][:, 1:] != -100).sum())
        total += completion_loss(model, batch).item() * n
        count += n
    model.train(was_training)
    return total / max(1, count)


def score_model(model, tok, prompts: list[str], scorer, max_new_tokens: int, seed: int) -> float:
    """Mean scorer value of sampled responses (temperature 1) on `prompts`."""
    from instructkit.generation import SamplingParams, generate_texts

    was_training = model.training
    model.eval()
    responses = generate_texts(model, tok, prompts, SamplingParams(max_new_tokens=max_new_tokens), seed=seed)
    model.train(was_training)
    scores = scorer(prompts, responses)
    return sum(scores) / max(1, len(scores))


def run(cfg: SFTConfig) -> dict:
    threads = set_threads(cfg.threads)
    D.setup(cfg.dist.timeout_minutes)  # under torchrun: join the other processes (else nothing)
    for name, value in (("model", cfg.model), ("data.train", cfg.data.train)):
        if not value:
            raise InputError("missing required field", field=name)
    if cfg.select.by == "score" and not (cfg.select.scorer and cfg.select.prompts):
        raise InputError("select.by=score needs select.scorer and select.prompts", field="select.scorer")
    if cfg.select.by == "loss" and not cfg.data.val:
        raise InputError("select.by=loss needs validation data", field="data.val")
    demos = datalib.load(cfg.data.train, "demonstration")
    val_demos = datalib.load(cfg.data.val, "demonstration") if cfg.data.val else []
    select_prompts = ([p.prompt for p in datalib.load(cfg.select.prompts, "prompt")][: cfg.select.n_prompts]
                      if cfg.select.prompts else [])
    scorer = None
    if cfg.select.by == "score":
        from instructkit.scoring import get_scorer
        scorer = get_scorer(cfg.select.scorer)
    model, tok = load_causal_lm(cfg.model, dropout=cfg.dropout)
    select_prompts = [render_prompt(p, tok, cfg.template) for p in select_prompts]

    max_len = min(cfg.data.max_len, max_positions(model) or cfg.data.max_len)  # past it GPT-2 cannot index
    encoded = encode_demonstrations(demos, tok, cfg.template, max_len)
    examples = [e for e, _ in encoded]
    n_trunc = sum(t for _, t in encoded)
    val_examples = [e for e, _ in encode_demonstrations(val_demos, tok, cfg.template, max_len)]
    lengths = [len(e.input_ids) for e in examples]
    targets = [sum(t != IGNORE for t in e.labels[1:]) for e in examples]  # completion tokens: the loss's denominator

    rundir = D.main_only(RunDir(cfg.out, "sft", cfg, {"model": cfg.model, "data.train": cfg.data.train,
                                                      "data.val": cfg.data.val, "select.prompts": cfg.select.prompts}))
    state = rundir.start()
    seed_everything(cfg.seed)
    per_epoch = math.ceil(len(examples) / cfg.batch_size)
    total = cfg.epochs * per_epoch
    every = cfg.select.every or per_epoch
    print(f"sft: {count_parameters(model) / 1e6:.2f}M parameters, {len(examples)} demonstrations "
          f"({n_trunc} truncated to {max_len} tokens), {cfg.epochs} epochs = {total} steps x "
          f"{cfg.batch_size}, select by {cfg.select.by}, {threads} thread(s), seed {cfg.seed}"
          + D.processes_note(cfg.dist.strategy))

    wrapped, optimizer, scheduler = setup_training(model, cfg.dist, cfg.optim, total, state)
    start, best, best_state, loss_ema = 0, None, None, None
    if state:
        start, best, best_state = state["step"], state["best"], state["best_state"]
        loss_ema = state.get("loss_ema")  # so the reported train_loss is the uninterrupted run's
        print(f"sft: resuming from step {start}")

    model.train()
    bar = progress(total, start, "sft")
    t0, tokens, batches = time.time(), 0, None
    for step in range(start, total):
        epoch, i = divmod(step, per_epoch)
        if i == 0 or batches is None:
            batches = epoch_batches(cfg.seed, epoch, lengths, cfg.batch_size, cfg.group_by_length)
        optimizer.zero_grad(set_to_none=True)
        # this process's share of the global batch (all of it without torchrun), each micro-batch's mean
        # loss weighted by its share of the batch's completion tokens: the gradient of the batch's mean
        n_targets = max(1, sum(targets[j] for j in batches[i]))
        loss = 0.0
        for chunk, live in D.micro_batches(wrapped, batches[i], cfg.dist.micro_batch_size):
            batch = collate_right([examples[j] for j in chunk], tok.pad_token_id)
            share = live * sum(targets[j] for j in chunk) / n_targets
            chunk_loss = wrapped(completion_loss, batch)
            D.backward(chunk_loss, share)
            loss += chunk_loss.item() * share
        loss = D.all_reduce_sum(loss)
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip or math.inf)
        optimizer.step()
        scheduler.step()
        tokens += sum(lengths[j] for j in batches[i])
        loss_ema = loss if loss_ema is None else 0.9 * loss_ema + 0.1 * loss
        done = step + 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss_ema:.3f}", epoch=epoch + 1)
        record = {"loss": loss, "lr": scheduler.get_last_lr()[0], "grad_norm": gnorm.item(),
                  "epoch": done / per_epoch}
        if done % every == 0 or done == total:
            # select (every process evaluates the same thing, so all make the same choice)
            with D.gathered(wrapped):
                if val_examples:
                    record["val_loss"] = demo_loss(model, val_examples, tok.pad_token_id)
                if scorer is not None:
                    record["val_score"] = score_model(model, tok, select_prompts, scorer, cfg.select.max_new_tokens,
                                                      cfg.seed)
            value = {"loss": -record.get("val_loss", 0.0), "score": record.get("val_score"), "last": done}[cfg.select.by]
            if cfg.select.by != "last" and (best is None or value > best["value"]):
                best = {"value": value, "step": done}
                best_state = copy.deepcopy(D.state_dict(wrapped))
        if done % cfg.log_every == 0 or done == total or "val_loss" in record or "val_score" in record:
            rundir.log(done, **record, tokens_per_s=tokens / max(1e-9, time.time() - t0))
        if done % cfg.save_every == 0 and done < total:
            rundir.save_checkpoint({"step": done, "model": D.state_dict(wrapped),
                                    "optimizer": D.optimizer_state_dict(wrapped, optimizer),
                                    "scheduler": scheduler.state_dict(), "rng": rng_state(), "best": best,
                                    "best_state": best_state, "loss_ema": loss_ema})
    bar.close()
    selected = total
    if best_state is not None:
        D.load_state_dict(wrapped, best_state)
        selected = best["step"]
    model = D.full_model(wrapped)  # fsdp: the whole model gathered on every process; otherwise `model` itself
    metrics = {"train_loss": loss_ema, "tokens_per_s": tokens / max(1e-9, time.time() - t0), "selected_step": selected}
    if val_examples:
        metrics["val_loss"] = demo_loss(model, val_examples, tok.pad_token_id)
    if best is not None and cfg.select.by == "score":
        metrics["val_score"] = best["value"]
    set_dropout(model, 0.0)  # saved models carry no training-time dropout; each stage sets its own
    if D.is_main():
        save_model(model, tok, cfg.out)
    rundir.finish(metrics)
    print(f"sft: done -> {cfg.out} (step {selected} of {total}) " +
          " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, float)))
    return metrics
