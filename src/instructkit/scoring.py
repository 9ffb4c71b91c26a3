"""Scorers: functions (prompts, responses) -> scores, used to select checkpoints and to judge.

Spec strings name them: 'sandbox:WORLD_DIR' is the sandbox's hidden gold utility; 'rm:RM_DIR' a
trained reward model (normalised); 'spec:SPEC.yaml' a behaviour spec's pass fraction; 'ai:JUDGE:CONSTITUTION.yaml'
an AI judge's verdicts. Stages take a spec string so that configs stay plain YAML."""
from __future__ import annotations

from typing import Callable

from instructkit.errors import InputError

Scorer = Callable[[list[str], list[str]], list[float]]
_FACTORIES: dict[str, Callable[[str], Scorer]] = {}


def register(kind: str):
    def deco(factory):
        _FACTORIES[kind] = factory
        return factory
    return deco


def get_scorer(spec: str) -> Scorer:
    kind, _, arg = spec.partition(":")
    if kind not in _FACTORIES or not arg:
        raise InputError(f"expected one of {sorted(k + ':PATH' for k in _FACTORIES)}, got {spec!r}",
                         field="scorer")
    return _FACTORIES[kind](arg)


@register("sandbox")
def _sandbox(world_dir: str) -> Scorer:
    from instructkit.sandbox.world import World

    world = World.load(world_dir)

    def score(prompts, responses):
        return [world.judge(p, r).utility for p, r in zip(prompts, responses)]
    return score


@register("rm")
def _reward_model(rm_dir: str) -> Scorer:
    from instructkit.reward import RewardScorer  # lands with the reward-model stage

    rm = RewardScorer.load(rm_dir)

    def score(prompts, responses):
        return rm.score(prompts, responses)
    return score


@register("spec")
def _spec(spec_file: str) -> Scorer:
    """A behaviour spec as a reward: the weighted fraction of the checks applying to the prompt that
    pass (instructkit.feedback_ai.spec)."""
    from instructkit.feedback_ai.spec import load_spec

    return load_spec(spec_file, scoring_only=True).score


@register("ai")
def _ai_labeler(arg: str) -> Scorer:
    """'ai:JUDGE:CONSTITUTION': an AI judge's verdict log-odds, weighted over the constitution's principles.
    JUDGE is a model directory or an OpenAI-compatible URL (URL#NAME); verdicts are cached."""
    from instructkit.feedback_ai.judge import AILabeler, VerdictCache, default_cache_dir, load_constitution, open_judge

    judge_spec, sep, constitution = arg.rpartition(":")
    if not sep or not judge_spec or not constitution:
        raise InputError(f"expected 'ai:JUDGE:CONSTITUTION.yaml', got 'ai:{arg}'", field="scorer")
    principles = load_constitution(constitution)
    judge = open_judge(judge_spec)
    return AILabeler(judge, principles, VerdictCache(default_cache_dir(), judge.id)).score


def reward_function(spec_or_dir: str) -> Scorer:
    """The reward a stage optimises: a reward-model directory, or any scorer spec ('spec:FILE',
    'ai:JUDGE:CONSTITUTION', 'sandbox:WORLD' for an oracle experiment)."""
    kind = spec_or_dir.partition(":")[0]
    if kind in _FACTORIES and kind != "rm":
        return get_scorer(spec_or_dir)
    from instructkit.reward import RewardScorer

    path = spec_or_dir[3:] if kind == "rm" else spec_or_dir
    return RewardScorer.load(path).score


def is_scorer_spec(value: str) -> bool:
    kind = value.partition(":")[0]
    return kind in _FACTORIES and kind != "rm"
