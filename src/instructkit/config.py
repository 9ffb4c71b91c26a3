"""Configs: one dataclass per stage. The same object is the Python API, the YAML schema and the
CLI flags (`key.sub=value`). Every field carries a one-line doc (and the paper's default where
the paper has one); `describe()` turns them into `--help` text and docs/config.md."""
from __future__ import annotations

from dataclasses import dataclass, field, is_dataclass
from typing import Any, Literal

from instructkit.config_io import describe, help_text, load_config, parse_override, to_dict  # noqa: F401 (the API)


def F(default: Any, doc: str, **kw) -> Any:
    """A config field with its documentation. Mutable defaults are copied per instance."""
    if isinstance(default, (list, dict)) or is_dataclass(default):
        import copy
        return field(default_factory=lambda: copy.deepcopy(default), metadata={"doc": doc}, **kw)
    return field(default=default, metadata={"doc": doc}, **kw)


# ---------------------------------------------------------------------------- building blocks

@dataclass
class ModelInit:
    """A model created from scratch (pretraining); ignored when `model` names a checkpoint."""
    family: Literal["gpt2", "gpt_neox", "llama", "qwen2"] = F("gpt2", "architecture family of the new model")
    d_model: int = F(96, "hidden size")
    n_layers: int = F(4, "number of transformer blocks")
    n_heads: int = F(4, "attention heads")
    d_ff: int = F(0, "MLP hidden size; 0 = 4 x d_model")
    max_len: int = F(128, "maximum sequence length (position embeddings)")
    dropout: float = F(0.0, "dropout in the new model")


@dataclass
class TokenizerConfig:
    """Load a tokenizer, or train a byte-level BPE one with `tokenizers` on the training text."""
    path: str = F("", "tokenizer directory to load; empty = train one on the pretraining text")
    vocab_size: int = F(1024, "vocabulary size when training a tokenizer")
    line_start_space: bool = F(True, "when training: a word that starts a line gets the same token as inside a "
                                     "line (false = plain GPT-2 byte-level BPE)")


@dataclass
class OptimConfig:
    """AdamW with warm-up then a cosine (or constant) schedule."""
    lr: float = F(3e-4, "peak learning rate")
    beta1: float = F(0.9, "Adam beta1")
    beta2: float = F(0.95, "Adam beta2 (InstructGPT: 0.95)")
    eps: float = F(1e-8, "Adam epsilon")
    weight_decay: float = F(0.0, "decoupled weight decay")
    warmup_steps: int = F(0, "linear warm-up steps (InstructGPT SFT: none)")
    schedule: Literal["cosine", "constant", "linear"] = F("cosine", "learning-rate schedule after warm-up")
    min_lr_ratio: float = F(0.1, "final LR as a fraction of peak (InstructGPT: cosine to 10%)")
    grad_clip: float = F(1.0, "clip the global gradient norm to this; 0 = off")


@dataclass
class TemplateConfig:
    """How a prompt record becomes model input text."""
    kind: Literal["plain", "chat"] = F("plain", "plain: the prompt text as is; chat: the tokenizer's chat template")
    system: str = F("", "system message prepended in chat mode (empty = none)")


@dataclass
class DistConfig:
    """Data-parallel training under `torchrun --nproc-per-node N -m instructkit <stage> ...`
    (docs/scaling.md); ignored without torchrun. The global batch is the stage's own batch size
    whatever N is: each process takes a slice of it, and the update equals the 1-process one."""
    strategy: Literal["ddp", "fsdp"] = F("ddp", "ddp: a full model per process (DistributedDataParallel); fsdp: "
                                                "parameters, gradients and optimiser state sharded over the processes "
                                                "(FSDP2), for models that do not fit one device")
    micro_batch_size: int = F(0, "sft, pretrain: examples per forward/backward in each process, gradients accumulated "
                                 "up to the global batch (less memory, same update); 0 = the process's whole share at "
                                 "once (rm: use its own micro_batch_size; dpo, ppo: a smaller batch)")
    timeout_minutes: float = F(30.0, "how long a process waits for the others at a collective before failing")


@dataclass
class StageConfig:
    """Fields every stage has: where it writes and how it runs."""
    out: str = F("", "output directory (required): a Hugging Face checkpoint plus instructkit.json and metrics.jsonl")
    seed: int = F(0, "random seed for initialisation, data order and sampling")
    threads: int = F(0, "torch CPU threads; 0 = $OMP_NUM_THREADS or all cores")
    save_every: int = F(50, "write a resumable checkpoint every N optimiser steps")
    log_every: int = F(10, "log metrics every N optimiser steps")
    overwrite: bool = F(False, "start over when `out` already holds a run (complete or not)")


# ---------------------------------------------------------------------------- stage configs

@dataclass
class PretrainData:
    train: str = F("", "pretraining text: JSONL of {\"text\"} records, or a .txt file (blank-line separated)")
    val: str = F("", "held-out text for validation loss (optional)")


@dataclass
class PretrainConfig(StageConfig):
    """Causal-LM pretraining on packed sequences (the sandbox's 'internet')."""
    model: str = F("", "checkpoint directory to continue from; empty = a new model from `init`")
    init: ModelInit = F(ModelInit(), "architecture of a new model")
    tokenizer: TokenizerConfig = F(TokenizerConfig(), "tokenizer to load or train")
    data: PretrainData = F(PretrainData(), "training text")
    seq_len: int = F(96, "tokens per packed training sequence")
    batch_size: int = F(16, "sequences per optimiser step")
    max_steps: int = F(1000, "optimiser steps")
    optim: OptimConfig = F(OptimConfig(lr=3e-3, warmup_steps=50), "optimiser")
    eval_every: int = F(0, "validation loss every N steps (0 = only at the end)")
    dist: DistConfig = F(DistConfig(), "multi-process training under torchrun (docs/scaling.md)")


@dataclass
class SFTData:
    train: str = F("", "demonstrations JSONL: {\"prompt\",\"completion\"} or {\"messages\"}")
    val: str = F("", "validation demonstrations (optional; loss reported, see `select`)")
    max_len: int = F(128, "maximum tokens of prompt + completion; longer examples are truncated")


@dataclass
class SelectConfig:
    """Which checkpoint becomes the output. InstructGPT: SFT validation loss overfits after ~1
    epoch while quality keeps rising, so select by a score on validation prompts, not by loss."""
    by: Literal["last", "loss", "score"] = F("last", "last step, lowest validation loss, or highest scorer value")
    every: int = F(0, "evaluate for selection every N steps (0 = once per epoch)")
    scorer: str = F("", "scorer for by=score, e.g. 'sandbox:WORLD_DIR' (gold utility) or 'rm:RM_DIR'")
    prompts: str = F("", "prompts JSONL the scorer samples on")
    n_prompts: int = F(64, "how many of those prompts to sample per evaluation")
    max_new_tokens: int = F(32, "response length limit when sampling for the scorer")


@dataclass
class SFTConfig(StageConfig):
    """Supervised fine-tuning on demonstrations: cross-entropy on completion tokens only."""
    model: str = F("", "base checkpoint directory (required)")
    data: SFTData = F(SFTData(), "demonstrations")
    template: TemplateConfig = F(TemplateConfig(), "prompt template")
    epochs: int = F(16, "passes over the demonstrations (InstructGPT: 16)")
    batch_size: int = F(32, "demonstrations per optimiser step")
    group_by_length: bool = F(True, "batch examples of similar length together (less padding; order still seeded)")
    dropout: float = F(0.2, "residual dropout during SFT (InstructGPT: 0.2)")
    optim: OptimConfig = F(OptimConfig(lr=1e-4), "optimiser (InstructGPT: cosine to 10%, no warm-up, beta2 0.95)")
    select: SelectConfig = F(SelectConfig(), "checkpoint selection")
    dist: DistConfig = F(DistConfig(), "multi-process training under torchrun (docs/scaling.md)")


@dataclass
class SampleConfig(StageConfig):
    """Sample completions from a model for a prompts file (writes {"prompt","completion"} records)."""
    model: str = F("", "model directory (required)")
    prompts: str = F("", "prompts JSONL (required)")
    template: TemplateConfig = F(TemplateConfig(), "prompt template")
    n: int = F(1, "samples per prompt")
    max_new_tokens: int = F(32, "maximum new tokens per sample")
    temperature: float = F(1.0, "sampling temperature; 0 = greedy")
    top_p: float = F(1.0, "nucleus sampling threshold")
    top_k: int = F(0, "top-k filtering; 0 = off")
    batch_size: int = F(64, "prompts per sampling batch")


@dataclass
class KLConfig:
    """The per-token KL penalty to the reference (SFT) policy."""
    coef: float = F(0.02, "initial KL coefficient beta (InstructGPT: 0.02)")
    adaptive: bool = F(False, "adapt beta toward `target` (Ziegler et al.): e = clip(KL/target - 1, ±0.2)")
    target: float = F(6.0, "target KL in nats per response for the adaptive controller")
    horizon: int = F(10000, "controller horizon in episodes")


@dataclass
class PPOConfig(StageConfig):
    """PPO (and PPO-ptx) against a reward model with a per-token KL penalty (InstructGPT §3.5)."""
    policy: str = F("", "SFT checkpoint: initialises the policy and, unless `reference` is set, the reference (required)")
    reference: str = F("", "frozen reference policy for the KL penalty; empty = `policy`")
    reward_model: str = F("", "reward model directory (normalised as stored in it) (required)")
    value_model: str = F("", "initialises the value model; empty = the reward model (InstructGPT)")
    prompts: str = F("", "training prompts JSONL (required)")
    eval_prompts: str = F("", "held-out prompts for evaluation and checkpoint selection")
    template: TemplateConfig = F(TemplateConfig(), "prompt template")
    episodes: int = F(256_000, "total episodes = prompts sampled (InstructGPT: 256k)")
    rollout_batch: int = F(512, "episodes per PPO iteration (InstructGPT: 512)")
    minibatch: int = F(64, "episodes per optimiser step (InstructGPT: 64)")
    ppo_epochs: int = F(1, "passes over each rollout batch (InstructGPT: 1)")
    max_new_tokens: int = F(32, "response length limit; responses are truncated after the first EOS")
    temperature: float = F(1.0, "sampling temperature, also applied in every log-prob pass")
    bucket_rows: int = F(32, "rows per forward pass in scoring and training: sorted by prompt + response length, "
                             "each group cut to its own longest prompt and response (the same values, less "
                             "padding); 0 = the whole batch in one pass")
    missing_eos_penalty: float = F(-1.0, "score given to a response that never emits EOS (replaces the RM score); 0 = off")
    kl: KLConfig = F(KLConfig(), "KL penalty")
    samples_per_prompt: int = F(1, "responses sampled per prompt in a rollout (InstructGPT: 1); rollout_batch must be a multiple")
    advantage: Literal["gae", "rloo"] = F("gae", "gae: value model + GAE (InstructGPT); rloo: leave-one-out baseline over each prompt's samples, no value model (needs samples_per_prompt >= 2)")
    gamma: float = F(1.0, "GAE discount (InstructGPT: 1)")
    lam: float = F(0.95, "GAE lambda (InstructGPT: 0.95)")
    clip_range: float = F(0.2, "PPO policy ratio clip (InstructGPT: 0.2)")
    vf_clip: float = F(0.2, "value clip around the rollout values (InstructGPT: 0.2)")
    vf_coef: float = F(0.1, "value-loss coefficient (InstructGPT: 0.1)")
    whiten_advantages: bool = F(True, "whiten advantages per rollout batch")
    scale_rewards: bool = F(False, "divide RM scores by their rollout std (scaled, not re-centred)")
    lr: float = F(9.65e-6, "policy learning rate (InstructGPT 1.3B: 9.65e-6)")
    value_lr: float = F(9.65e-6, "value-model learning rate")
    adam_eps: float = F(1e-5, "Adam epsilon (PyTorch places it differently from TensorFlow)")
    warmup_iterations: int = F(10, "linear LR warm-up over the first iterations, then constant")
    value_warmup_iterations: int = F(0, "first iterations train only the value model (policy frozen) so that advantages are not value noise; 0 = off (InstructGPT)")
    grad_clip: float = F(1.0, "gradient-norm clip; 0 = off")
    ema: float = F(0.0, "weight EMA decay for the saved policy (InstructGPT option: 0.992); 0 = off")
    ptx_coef: float = F(0.0, "PPO-ptx: pretraining loss coefficient gamma (InstructGPT: 27.8); 0 = plain PPO")
    ptx_data: str = F("", "pretraining text for PPO-ptx (JSONL {\"text\"} or .txt)")
    ptx_per_episode: float = F(8.0, "pretraining sequences per episode (InstructGPT: 8)")
    ptx_seq_len: int = F(96, "tokens per pretraining sequence")
    eval_every: int = F(5, "evaluate on held-out prompts every N iterations (0 = only at the end)")
    eval_scorer: str = F("", "held-out judge: 'sandbox:WORLD' (gold) or 'rm:DIR'; empty = the reward model")
    eval_n: int = F(128, "held-out prompts per evaluation")
    eval_samples: int = F(1, "responses sampled per held-out prompt in each evaluation; the score is their mean (more samples: less noise in checkpoint selection)")
    gold: str = F("", "extra scorer logged next to the RM reward (the sandbox's gold), e.g. 'sandbox:WORLD'")
    select: Literal["best", "last"] = F("best", "output the best held-out checkpoint, or the last")
    stop_on_alarm: bool = F(True, "stop (keeping the last good checkpoint) on NaN/inf; warn on negative KL and runaway length")
    hack_window: int = F(3, "reward-hacking detector: evaluations compared (RM reward rising while the held-out judge falls)")
    kl_slope_max: float = F(0.0, "reward-hacking detector: warn when KL per response grows faster than this per iteration (0 = off)")
    stop_on_hacking: bool = F(False, "stop when the reward-hacking detector fires (the best held-out checkpoint is kept)")
    require_gate: bool = F(True, "refuse to start unless the RM's best-of-n gain on held-out prompts (in its instructkit.json) is above 0")
    dist: DistConfig = F(DistConfig(), "multi-process training under torchrun (docs/scaling.md)")


@dataclass
class BoNConfig(StageConfig):
    """Best-of-n: sample n responses per prompt, keep the reward model's best."""
    model: str = F("", "policy to sample from (required)")
    reward_model: str = F("", "reward model that picks the best (required)")
    prompts: str = F("", "prompts JSONL (required)")
    n: int = F(16, "samples per prompt")
    n_prompts: int = F(0, "use the first N prompts of the file (0 = all)")
    template: TemplateConfig = F(TemplateConfig(), "prompt template")
    max_new_tokens: int = F(32, "response length limit")
    temperature: float = F(1.0, "sampling temperature")
    batch_size: int = F(64, "prompts per sampling batch")
    gold: str = F("", "optional judge (e.g. 'sandbox:WORLD') scored for every n in 1,2,4,...,n")


# ---------------------------------------------------------------------------- reward model (issue 4)

@dataclass
class RMData:
    train: list[str] = F([], "K-way rankings JSONL (required): {\"prompt\",\"completions\",\"ranks\"}, TRL pairs "
                             "{\"prompt\",\"chosen\",\"rejected\"} or ratings {\"prompt\",\"completions\",\"scores\"}; "
                             "several files (a YAML list or comma-separated) are concatenated")
    val: str = F("", "held-out rankings (optional; without it `val_fraction` of the training prompts is held out)")
    val_fraction: float = F(0.05, "share of training prompts held out when `val` is empty (split by prompt text); 0 = none")
    max_len: int = F(256, "maximum tokens of prompt + completion (+ EOS); the prompt is cut from the left first; "
                          "capped at the model's position limit")


@dataclass
class RMNormalize:
    """After training, InstructGPT adds a bias so labeler demonstrations score 0 on average;
    lm-human-preferences sets gain and bias so reference samples have mean 0, std 1."""
    kind: Literal["demonstrations", "reference", "none"] = F(
        "demonstrations", "demonstrations: bias to mean 0 on `data`; reference: gain+bias to mean 0 / std 1; none")
    data: str = F("", "JSONL of {\"prompt\",\"completion\"}: labeler demonstrations or reference samples. Empty with "
                      "kind=demonstrations: the SFT run's recorded demonstrations, else the top-ranked completions")


@dataclass
class RMEval:
    agreement: float = F(0.0, "labelers' pairwise agreement on this data (the accuracy ceiling); 0 = unknown "
                              "(records may carry their own `agreement`)")
    gold: str = F("", "scorer whose utilities give the gold ordering, e.g. 'sandbox:WORLD_DIR'; empty = the "
                      "records' `gold_ranks` if any")
    bins: int = F(5, "calibration buckets of predicted probability over [0.5, 1]")
    batch_size: int = F(64, "sequences per scoring forward pass")
    previous: str = F("", "an earlier reward model (the previous round's): it and this one are compared on the "
                          "held-out prompts of the last data.train file, the newest policy's samples (gates.latest)")


@dataclass
class RMSelect:
    by: Literal["last", "accuracy"] = F("last", "output the last step, or the best held-out pairwise accuracy")
    every: int = F(0, "evaluate held-out accuracy every N steps for by=accuracy (0 = only at the end)")


@dataclass
class RMConfig(StageConfig):
    """Reward model on K-way rankings (InstructGPT §3.5): a scalar head on a causal LM; one batch
    element is one prompt with all its K completions (K forward rows), loss over all its ranked
    pairs scaled by 1/pairs; ties dropped; 1 epoch; then normalised and evaluated."""
    model: str = F("", "causal LM to initialise from, usually the SFT model (required); an RM continues training")
    policy: str = F("", "policy whose tokenizer the RM must share (optional; checked, never loaded as a model)")
    data: RMData = F(RMData(), "rankings")
    template: TemplateConfig = F(TemplateConfig(), "prompt template (stored with the RM; every consumer renders with it)")
    append_eos: bool = F(True, "end each completion with EOS, so the score is read at EOS (stored with the RM)")
    epochs: int = F(1, "passes over the rankings (InstructGPT: exactly 1; more overfits)")
    batch_size: int = F(64, "prompts (each with all its K completions) per optimiser step (InstructGPT: 64)")
    micro_batch_size: int = F(0, "prompts per forward pass, gradients accumulated (memory); 0 = the whole batch")
    bucket_rows: int = F(32, "completions per padded forward pass: a step's rows sorted by length and cut into "
                             "groups this size (sandbox K-way batches: 43% -> 79% real tokens, 2.5x faster on CPU; larger "
                             "suits a GPU); 0 = one pass")
    dropout: float = F(0.0, "dropout during RM training")
    optim: OptimConfig = F(OptimConfig(lr=1e-4), "optimiser: cosine to 10%, no warm-up (InstructGPT RM: "
                                                   "9e-6 at 6B and LR-insensitive; tiny models need more)")
    normalize: RMNormalize = F(RMNormalize(), "normalisation stored in the checkpoint")
    eval: RMEval = F(RMEval(), "held-out evaluation at the end of training")
    select: RMSelect = F(RMSelect(), "checkpoint selection")
    dist: DistConfig = F(DistConfig(), "multi-process training under torchrun (docs/scaling.md)")


@dataclass
class RMEvalConfig:
    """Evaluate a reward model on rankings: pairwise accuracy (overall, per K, per task, per labeler),
    calibration, accuracy vs gold orderings, and accuracy next to the labelers' agreement."""
    model: str = F("", "reward model directory (required)")
    data: str = F("", "rankings JSONL (required)")
    agreement: float = F(0.0, "labelers' pairwise agreement (the ceiling); 0 = unknown or per-record `agreement`")
    gold: str = F("", "scorer whose utilities give the gold ordering, e.g. 'sandbox:WORLD_DIR'; empty = the "
                      "records' `gold_ranks` if any")
    bins: int = F(5, "calibration buckets of predicted probability over [0.5, 1]")
    batch_size: int = F(64, "sequences per scoring forward pass")
    out: str = F("", "optional JSON file for the full report")
    threads: int = F(0, "torch CPU threads; 0 = $OMP_NUM_THREADS or all cores")


@dataclass
class ScoreConfig:
    """Score {"prompt","completion"} records with a reward model; writes each record plus `score`
    (normalised as stored in the RM) to `out`, atomically."""
    model: str = F("", "reward model directory (required)")
    input: str = F("", "JSONL of {\"prompt\",\"completion\"} records (required; flag --input)")
    out: str = F("", "output JSONL (required)")
    batch_size: int = F(64, "sequences per forward pass")
    raw: bool = F(False, "also write `score_raw`, the score before normalisation")
    threads: int = F(0, "torch CPU threads; 0 = $OMP_NUM_THREADS or all cores")


# ---------------------------------------------------------------------------- direct preference (issue 6)

@dataclass
class DirectData:
    train: str = F("", "preferences JSONL (required): K-way rankings {\"prompt\",\"completions\",\"ranks\"}, pairs "
                       "{\"prompt\",\"chosen\",\"rejected\"} or ratings; for loss=kto unpaired "
                       "{\"prompt\",\"completion\",\"label\"} records (or rankings with kto_from=rankings)")
    val: str = F("", "held-out preferences of the same kind: loss and reward accuracy at each evaluation, "
                     "and (without select.prompts) the prompts sampled for the KL estimate")
    max_len: int = F(128, "maximum tokens of prompt + completion (+ EOS); the prompt keeps its end, completions their start")


@dataclass
class DirectSelect:
    """Held-out evaluation and which checkpoint becomes the output."""
    by: Literal["last", "loss", "accuracy", "score"] = F(
        "last", "last step, lowest held-out loss, highest held-out reward accuracy (both need data.val), "
                "or highest scorer value on sampled responses")
    every: int = F(0, "evaluate every N optimiser steps (0 = once per epoch)")
    scorer: str = F("", "scorer of sampled responses, e.g. 'sandbox:WORLD_DIR' (gold utility) or 'rm:RM_DIR'")
    prompts: str = F("", "prompts JSONL sampled for the scorer and the KL estimate (empty = data.val's prompts)")
    n_prompts: int = F(64, "how many of those prompts to sample per evaluation")
    max_new_tokens: int = F(32, "response length limit when sampling")
    kl: bool = F(True, "at each evaluation, estimate KL(policy || reference) on responses sampled from the policy "
                       "(keeps the reference model in memory; ORPO loads it only for this)")


@dataclass
class DirectConfig(StageConfig):
    """Direct preference optimisation from an SFT model, no reward model: DPO, conservative DPO,
    IPO, SLiC-HF, KTO, ORPO. The reference is the frozen SFT model; its log-probs are computed
    once per dataset and cached. K-way rankings: all ranked pairs of a prompt form one batch element."""
    model: str = F("", "SFT checkpoint (required): initialises the policy and is the frozen reference")
    loss: Literal["dpo", "cdpo", "ipo", "slic", "kto", "orpo"] = F(
        "dpo", "dpo: -log sigmoid(beta h); cdpo: with label smoothing; ipo: (h - 1/(2 tau))^2 on length-averaged "
               "log-probs; slic: max(0, delta - beta h); kto: unpaired, prospect-theoretic; orpo: SFT + odds ratio, "
               "no reference")
    data: DirectData = F(DirectData(), "preference data")
    template: TemplateConfig = F(TemplateConfig(), "prompt template")
    beta: float = F(0.1, "KL strength beta of dpo, cdpo, slic and kto; implicit reward = beta log pi/ref (DPO: 0.1)")
    label_smoothing: float = F(0.1, "cdpo: probability e that a preference label is flipped, in [0, 0.5) "
                                    "(loss=dpo is e = 0)")
    tau: float = F(0.1, "ipo: regularisation tau; target margin 1/(2 tau) of the length-averaged log-ratio")
    delta: float = F(1.0, "slic: hinge margin delta (SLiC-HF: 1)")
    slic_sft_weight: float = F(0.0, "slic: weight of the SFT (NLL) term on each prompt's best completion; 0 = off")
    lambda_d: float = F(1.0, "kto: weight of desirable examples (KTO: keep lambda_d n_d / lambda_u n_u in [1, 4/3])")
    lambda_u: float = F(1.0, "kto: weight of undesirable examples")
    orpo_lambda: float = F(0.1, "orpo: weight lambda of the odds-ratio term next to the SFT loss (ORPO: 0.1)")
    kto_from: Literal["unpaired", "rankings"] = F(
        "unpaired", "kto: read unpaired records, or split rankings/pairs into desirable (rank 1) and "
                    "undesirable (worst rank) examples")
    epochs: int = F(3, "passes over the preference data")
    batch_size: int = F(16, "prompts per optimiser step, each with all its completions (kto: examples)")
    group_by_length: bool = F(False, "batch prompts of similar length together: less padding, but length-homogeneous "
                                     "batches learned less (held-out) in benchmarks/direct.py and saved no CPU time there")
    dropout: float = F(0.0, "dropout while training (off, as in TRL: policy and reference log-probs must compare)")
    optim: OptimConfig = F(OptimConfig(lr=2e-5, warmup_steps=10),
                           "optimiser: warm-up then cosine to 10%. DPO used 5e-7 at 6.9B; sandbox-sized models "
                           "(~1M parameters, SFT at 1e-4) move at 2e-5")
    select: DirectSelect = F(DirectSelect(), "held-out evaluation and checkpoint selection")
    ref_cache: str = F("", "directory for cached reference log-probs; empty = $INSTRUCTKIT_CACHE/ref_logps "
                           "(default ~/.cache/instructkit/ref_logps)")
    log_every: int = F(1, "log metrics every N optimiser steps")
    dist: DistConfig = F(DistConfig(), "multi-process training under torchrun (docs/scaling.md)")


@dataclass
class EvalConfig(StageConfig):
    """Evaluation as InstructGPT did it: win rate against a baseline with 95% intervals, judged by a
    held-out panel (sandbox), a reward model, or human comparisons; Likert; Table 3 metadata; the
    sandbox's behaviour rates; the alignment tax."""
    models: list[str] = F([], "models as NAME=DIR, or NAME=DIR@T to sample at temperature T (required)")
    baseline: str = F("", "the NAME every model is compared with (required)")
    prompts: str = F("", "held-out prompts JSONL (required)")
    world: str = F("", "sandbox world directory: enables the panel judge, behaviour rates and alignment tax")
    judge: str = F("panel", "panel (sandbox held-out labelers) | gold | rm:DIR | human:FILE (labeling-app comparisons)")
    template: TemplateConfig = F(TemplateConfig(), "prompt template")
    n_prompts: int = F(0, "use only the first N prompts; 0 = all")
    max_new_tokens: int = F(32, "response length limit")
    temperature: float = F(1.0, "default sampling temperature (per model: NAME=DIR@T)")
    fewshot: dict[str, int] = F({}, "models prompted few-shot, NAME: K (CLI: fewshot.NAME=K): each prompt follows K "
                                    "demonstrations as pretraining answer keys write them (`instruction\\nanswer\\n`), "
                                    "drawn per prompt (seeded, never the prompt itself), fewer if the model's positions "
                                    "run out; the answer is cut at its first newline (fewshot_cut) and judged alone")
    fewshot_cut: bool = F(True, "cut each few-shot answer at its first newline, where the next instruction would "
                                "start (a stop sequence); false judges the whole continuation, as a bare model's is")
    fewshot_data: str = F("", "demonstrations JSONL the few-shot examples come from; empty = the world's "
                              "demonstrations.jsonl")
    alignment_tax: bool = F(True, "held-out pretraining loss and few-shot answer-key accuracy (needs `world`)")
    oracle: bool = F(False, "also judge `oracle`, the sandbox's perfect policy: a right answer to every prompt in "
                            "its plainest words (needs `world`). Its win rate is the ceiling of every other: where "
                            "the baseline answers right too the judges see a tie or a toss-up")
    batch_size: int = F(64, "prompts per sampling batch")


@dataclass
class ReportConfig(StageConfig):
    """The self-contained HTML report (PNG plots inline) and summary.json of a pipeline run."""
    run: str = F("", "pipeline output root holding the stage directories (required)")
    stages: list[str] = F(["pretrain", "sft", "rm", "ppo", "ppo_ptx", "dpo"], "stage directories whose training curves are plotted (missing ones are skipped)")
    eval: str = F("eval", "the eval stage's directory name under `run`")
    bon: str = F("bon.jsonl", "the best-of-n output under `run` (its .summary.json holds the curve)")
    ppo: list[str] = F(["ppo", "ppo_ptx"], "PPO stage directories for reward/KL and over-optimisation plots")
    world_report: str = F("world_report.json", "labeler agreement measured by `world report`, under `run`")
    headline: str = F("headline.json", "small aligned policy vs a ~8x larger base model, written by `make bench` "
                                       "(benchmarks/headline.py), under `run`; in the claims table when present")
    samples: int = F(8, "side-by-side sample prompts shown")
