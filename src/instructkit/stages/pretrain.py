"""Stage `pretrain`: a causal LM on packed text — the sandbox's 'internet', or continued pretraining."""
from __future__ import annotations

import math
import time

import torch

from instructkit import data as datalib
from instructkit import distributed as D
from instructkit.config import PretrainConfig
from instructkit.data.encode import encode_text, pack_texts
from instructkit.errors import InputError
from instructkit.models import (count_parameters, load_causal_lm, load_tokenizer, max_positions, new_model,
                                save_model, set_threads, train_tokenizer)
from instructkit.run import (RunDir, epoch_permutation, progress, rng_state, seed_everything, setup_training)


def lm_loss(model, batch: torch.Tensor) -> torch.Tensor:
    """Mean next-token loss of (B, T) packed blocks."""
    return model(input_ids=batch, labels=batch).loss


@torch.no_grad()
def eval_loss(model, blocks: torch.Tensor, batch_size: int = 32) -> float:
    """Mean next-token loss over (N, T) blocks."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(blocks), batch_size):
        b = blocks[i: i + batch_size]
        out = model(input_ids=b, labels=b)
        total += out.loss.item() * b.numel()
        count += b.numel()
    model.train(was_training)
    return total / max(1, count)


def run(cfg: PretrainConfig) -> dict:
    threads = set_threads(cfg.threads)
    D.setup(cfg.dist.timeout_minutes)  # under torchrun: join the other processes (else nothing)
    if not cfg.data.train:
        raise InputError("missing required field (pretraining text)", field="data.train")
    # Validate every input before anything is written.
    train_docs = [t.text for t in datalib.load(cfg.data.train, "text")]
    val_docs = [t.text for t in datalib.load(cfg.data.val, "text")] if cfg.data.val else []
    if not cfg.model and cfg.seq_len > cfg.init.max_len:
        raise InputError(f"seq_len {cfg.seq_len} exceeds init.max_len {cfg.init.max_len}", field="seq_len")
    if cfg.model:
        model, tok = load_causal_lm(cfg.model)
        limit = max_positions(model)
        if limit and cfg.seq_len > limit:
            raise InputError(f"seq_len {cfg.seq_len} exceeds the model's {limit} positions", field="seq_len")
    else:
        tok = load_tokenizer(cfg.tokenizer.path) if cfg.tokenizer.path else None
    rundir = D.main_only(RunDir(cfg.out, "pretrain", cfg, {"data.train": cfg.data.train, "data.val": cfg.data.val,
                                                           "model": cfg.model, "tokenizer": cfg.tokenizer.path}))
    state = rundir.start()
    seed_everything(cfg.seed)
    if not cfg.model:
        if tok is None:  # train once; a resumed run reloads the very same tokenizer from `out`
            # (trained by rank 0 and handed to the others under torchrun)
            tok = load_tokenizer(cfg.out) if state else D.broadcast_object(
                train_tokenizer(train_docs, cfg.tokenizer.vocab_size, cfg.tokenizer.line_start_space)
                if D.is_main() else None)
        model = new_model(cfg.init, tok, seed=cfg.seed)
    if D.is_main():
        tok.save_pretrained(cfg.out)

    blocks = pack_texts([encode_text(tok, d) for d in train_docs], tok.eos_token_id, cfg.seq_len)
    val_blocks = pack_texts([encode_text(tok, d) for d in val_docs], tok.eos_token_id, cfg.seq_len) if val_docs else None
    if len(blocks) < 1:
        raise InputError(f"fewer than {cfg.seq_len} tokens of training text", path=cfg.data.train)
    print(f"pretrain: {count_parameters(model) / 1e6:.2f}M parameters ({model.config.model_type}), "
          f"vocab {len(tok)}, {blocks.numel() / 1e6:.2f}M tokens in {len(blocks)} blocks, "
          f"{cfg.max_steps} steps x {cfg.batch_size}, {threads} thread(s), seed {cfg.seed}"
          + D.processes_note(cfg.dist.strategy))

    wrapped, optimizer, scheduler = setup_training(model, cfg.dist, cfg.optim, cfg.max_steps, state)
    start, loss_ema = 0, None
    if state:
        start, loss_ema = state["step"], state.get("loss_ema")  # train_loss as if never interrupted
        print(f"pretrain: resuming from step {start}")

    per_epoch = max(1, len(blocks) // cfg.batch_size)
    model.train()
    bar = progress(cfg.max_steps, start, "pretrain")
    t0, tokens = time.time(), 0
    for step in range(start, cfg.max_steps):
        epoch, i = divmod(step, per_epoch)
        order = epoch_permutation(cfg.seed, epoch, len(blocks))
        rows = order[i * cfg.batch_size:(i + 1) * cfg.batch_size]
        optimizer.zero_grad(set_to_none=True)
        # this process's share of the global batch (all of it without torchrun); blocks are equally long,
        # so each micro-batch's mean loss counts by its share of the blocks
        loss = 0.0
        for chunk, live in D.micro_batches(wrapped, rows, cfg.dist.micro_batch_size):
            batch = blocks[chunk]  # (B, T)
            share = live * len(chunk) / len(rows)
            chunk_loss = wrapped(lm_loss, batch)
            D.backward(chunk_loss, share)
            loss += chunk_loss.item() * share
        loss = D.all_reduce_sum(loss)
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip or math.inf)
        optimizer.step()
        scheduler.step()
        tokens += len(rows) * blocks.shape[1]
        loss_ema = loss if loss_ema is None else 0.95 * loss_ema + 0.05 * loss
        done = step + 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss_ema:.3f}")
        record = {"loss": loss, "lr": scheduler.get_last_lr()[0], "grad_norm": gnorm.item()}
        if cfg.eval_every and val_blocks is not None and done % cfg.eval_every == 0:
            with D.gathered(wrapped):
                record["val_loss"] = eval_loss(model, val_blocks)
        if done % cfg.log_every == 0 or done == cfg.max_steps or "val_loss" in record:
            rundir.log(done, **record, tokens_per_s=tokens / max(1e-9, time.time() - t0))
        if done % cfg.save_every == 0 and done < cfg.max_steps:
            rundir.save_checkpoint({"step": done, "model": D.state_dict(wrapped),
                                    "optimizer": D.optimizer_state_dict(wrapped, optimizer),
                                    "scheduler": scheduler.state_dict(), "rng": rng_state(), "loss_ema": loss_ema})
    bar.close()
    model = D.full_model(wrapped)  # fsdp: the whole model gathered on every process; otherwise `model` itself
    metrics = {"train_loss": loss_ema, "tokens_per_s": tokens / max(1e-9, time.time() - t0)}
    if val_blocks is not None:
        metrics["val_loss"] = eval_loss(model, val_blocks)
    if D.is_main():
        save_model(model, tok, cfg.out)
    rundir.finish(metrics, {"parameters": count_parameters(model)})
    print(f"pretrain: done -> {cfg.out} " + " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if v is not None))
    return metrics
