"""Scorers: functions (prompts, responses) -> scores, used to select checkpoints and to judge.

Spec strings name them: 'sandbox:WORLD_DIR' is the sandbox's hidden gold utility; 'rm:RM_DIR' a
trained reward model (normalised). Stages take a spec string so that configs stay plain YAML."""
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
