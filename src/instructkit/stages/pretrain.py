"""Stage `pretrain`: a causal LM on packed text — the sandbox's 'internet', or continued pretraining."""
from __future__ import annotations

import math
import time

import torch

from instructkit import data as datalib
from instructkit.config import PretrainConfig
from instructkit.data.encode import encode_text, pack_texts
from instructkit.errors import InputError
from instructkit.models import (count_parameters, load_causal_lm, load_tokenizer, max_positions, new_model,
                                save_model, set_threads, train_tokenizer)
from instructkit.run import (RunDir, epoch_permutation, make_optimizer, make_scheduler, progress, rng_state,
                             seed_everything, set_rng_state)


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
    rundir = RunDir(cfg.out, "pretrain", cfg, {"data.train": cfg.data.train, "data.val": cfg.data.val,
                                               "model": cfg.model, "tokenizer": cfg.tokenizer.path})
    state = rundir.start()
    seed_everything(cfg.seed)
    if not cfg.model:
        if tok is None:  # train once; a resumed run reloads the very same tokenizer from `out`
            tok = load_tokenizer(cfg.out) if state else train_tokenizer(train_docs, cfg.tokenizer.vocab_size)
        model = new_model(cfg.init, tok, seed=cfg.seed)
    tok.save_pretrained(cfg.out)

    blocks = pack_texts([encode_text(tok, d) for d in train_docs], tok.eos_token_id, cfg.seq_len)
    val_blocks = pack_texts([encode_text(tok, d) for d in val_docs], tok.eos_token_id, cfg.seq_len) if val_docs else None
    if len(blocks) < 1:
        raise InputError(f"fewer than {cfg.seq_len} tokens of training text", path=cfg.data.train)
    print(f"pretrain: {count_parameters(model) / 1e6:.2f}M parameters ({model.config.model_type}), "
          f"vocab {len(tok)}, {blocks.numel() / 1e6:.2f}M tokens in {len(blocks)} blocks, "
          f"{cfg.max_steps} steps x {cfg.batch_size}, {threads} thread(s), seed {cfg.seed}")

    optimizer = make_optimizer(model.parameters(), cfg.optim)
    scheduler = make_scheduler(optimizer, cfg.optim, cfg.max_steps)
    start, loss_ema = 0, None
    if state:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        start, loss_ema = state["step"], state.get("loss_ema")  # train_loss as if never interrupted
        print(f"pretrain: resuming from step {start}")

    per_epoch = max(1, len(blocks) // cfg.batch_size)
    model.train()
    bar = progress(cfg.max_steps, start, "pretrain")
    t0, tokens = time.time(), 0
    for step in range(start, cfg.max_steps):
        epoch, i = divmod(step, per_epoch)
        order = epoch_permutation(cfg.seed, epoch, len(blocks))
        batch = blocks[order[i * cfg.batch_size:(i + 1) * cfg.batch_size]]  # (B, T)
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip or math.inf)
        optimizer.step()
        scheduler.step()
        tokens += batch.numel()
        loss_ema = loss.item() if loss_ema is None else 0.95 * loss_ema + 0.05 * loss.item()
        done = step + 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss_ema:.3f}")
        record = {"loss": loss.item(), "lr": scheduler.get_last_lr()[0], "grad_norm": gnorm.item()}
        if cfg.eval_every and val_blocks is not None and done % cfg.eval_every == 0:
            record["val_loss"] = eval_loss(model, val_blocks)
        if done % cfg.log_every == 0 or done == cfg.max_steps or "val_loss" in record:
            rundir.log(done, **record, tokens_per_s=tokens / max(1e-9, time.time() - t0))
        if done % cfg.save_every == 0 and done < cfg.max_steps:
            rundir.save_checkpoint({"step": done, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                    "scheduler": scheduler.state_dict(), "rng": rng_state(), "loss_ema": loss_ema})
    bar.close()
    metrics = {"train_loss": loss_ema, "tokens_per_s": tokens / max(1e-9, time.time() - t0)}
    if val_blocks is not None:
        metrics["val_loss"] = eval_loss(model, val_blocks)
    save_model(model, tok, cfg.out)
    rundir.finish(metrics, {"parameters": count_parameters(model)})
    print(f"pretrain: done -> {cfg.out} " + " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if v is not None))
    return metrics
