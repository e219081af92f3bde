"""Env state in checkpoints: small (no spaces, no frames), and a restored pool continues exactly where it was."""

from __future__ import annotations

import pickle
import random

import numpy as np
import pytest

from selu_lightning.envs.base import env_class, register_env
from selu_lightning.envs.cards.numberline import NumberLineEnv
from selu_lightning.envs.pool import EnvPool
from selu_lightning.errors import ConfigError

#: Bytes per env of a pickled pool snapshot (300-px frames). Measured: 340-410 for the card games and babyai,
#: ~1,000 for virtualhome and alfworld (long state texts). One frame is 270,000 bytes, the spaces ~1,080,000.
MAX_BYTES_PER_ENV = 10_000


def available(name: str) -> None:
    try:
        env_class(name)
    except ConfigError as err:  # an optional simulator that is not installed
        pytest.skip(str(err))


def actions_for(pool: EnvPool, rng: np.random.Generator) -> list[str]:
    """A legal action per env, now and then one that is not (failure paths are part of an episode too)."""
    return [
        "not an action" if rng.random() < 0.15 or not s.legal_actions else str(rng.choice(s.legal_actions))
        for s in pool.states
    ]


def seen(state) -> tuple:
    return state.text, state.goal, state.legal_actions, state.image.shape, state.image.tobytes()


def continue_both(a: EnvPool, b: EnvPool, steps: int, rng: np.random.Generator) -> int:
    """Step both pools with the same actions; every outcome and state must agree. Returns episodes finished."""
    assert [seen(s) for s in a.states] == [seen(s) for s in b.states]
    finished = 0
    for _ in range(steps):
        actions = actions_for(a, rng)
        for x, y in zip(a.step(actions), b.step(actions)):
            assert (x.reward, x.terminated, x.truncated, x.info, x.episode) == (
                y.reward, y.terminated, y.truncated, y.info, y.episode)  # fmt: skip
            assert (x.final_state is None) == (y.final_state is None)
            if x.final_state is not None:
                assert seen(x.final_state) == seen(y.final_state)
            finished += x.episode is not None
        assert [seen(s) for s in a.states] == [seen(s) for s in b.states]
    return finished


@pytest.mark.parametrize(
    "name, num_envs, workers",
    [
        *[(n, 8, "inprocess") for n in ("numberline", "ezpoints", "points24", "blackjack", "babyai", "virtualhome")],
        ("alfworld", 4, "inprocess"),
        *[(n, 2, "subprocess") for n in ("numberline", "points24", "blackjack", "babyai", "virtualhome")],
    ],
)
def test_snapshot_is_small_and_restore_continues_exactly(name, num_envs, workers):
    available(name)
    rng = np.random.default_rng(0)
    pool = EnvPool(name, num_envs, seed=3, workers=workers)
    restored = None
    try:
        pool.reset()
        for _ in range(7):  # card games end episodes within 7 steps: snapshots also fall just after auto-resets
            pool.step(actions_for(pool, rng))
        blob = pickle.dumps(pool.snapshot())
        assert len(blob) / num_envs < MAX_BYTES_PER_ENV, len(blob) / num_envs
        restored = EnvPool.restore(pickle.loads(blob))
        assert restored.workers == workers and restored.num_envs == num_envs
        finished = continue_both(pool, restored, 12, rng)
        if name not in ("babyai", "alfworld"):  # their episodes outlast the test
            assert finished > 0
    finally:
        pool.close()
        if restored is not None:
            restored.close()


def test_snapshot_before_reset_and_after_reset_to():
    pool = EnvPool("numberline", 3, seed=1)
    fresh = EnvPool.restore(pickle.loads(pickle.dumps(pool.snapshot())))
    assert fresh.states == [] and fresh.num_envs == 3
    pool.reset_to([11, 12])  # evaluation uses the first envs only
    pool.step(["+", "-"], indices=[0, 1])
    restored = EnvPool.restore(pickle.loads(pickle.dumps(pool.snapshot())))
    assert len(restored.states) == 2
    assert continue_both(pool, restored, 10, np.random.default_rng(1)) > 0


@register_env("test-stub-counting-numberline")
class CountingNumberLineStub(NumberLineEnv):
    """Test double: NumberLine that carries a step counter across episodes, so only pickling can restore it."""

    checkpoint_by = "pickle"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.total_steps = 0

    def step(self, action):
        self.total_steps += 1
        obs, reward, terminated, truncated, info = super().step(action)
        return obs | {"text": f"{obs['text']}\nSteps so far: {self.total_steps}"}, reward, terminated, truncated, info


def test_pickled_envs_restore_without_their_spaces():
    pool = EnvPool("test-stub-counting-numberline", 2, seed=0)
    pool.reset()
    for t in range(15):
        pool.step(["+" if t % 3 else "-"] * 2)
    snap = pool.snapshot()
    assert all(e["by"] == "pickle" for e in snap["envs"])
    # The env's own frame and the state's image (nothing re-derives them) but not the spaces (~1 MB).
    assert len(pickle.dumps(snap)) / 2 < 2 * 300 * 300 * 3 + MAX_BYTES_PER_ENV
    restored = EnvPool.restore(pickle.loads(pickle.dumps(snap)))
    assert restored.handles[0].env.env.total_steps == 15
    continue_both(pool, restored, 10, np.random.default_rng(2))


def test_spaces_are_rebuilt_not_pickled():
    env = NumberLineEnv(image_size=64)
    env.reset(seed=0)
    clone = pickle.loads(pickle.dumps(env))
    assert clone.observation_space == env.observation_space and clone.action_space == env.action_space
    assert len(pickle.dumps(env)) < 64 * 64 * 3 + 2_000  # its frame and a few fields


@register_env("test-stub-unseeded-numberline")
class UnseededNumberLineStub(NumberLineEnv):
    """Test double: draws its start from Python's global RNG, not ``np_random``, so a replay cannot follow."""

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        return super().reset(options={"state": {"position": random.choice([0, 5]), "target": 2}})


def test_replay_that_does_not_follow_is_refused_loudly():
    pool = EnvPool("test-stub-unseeded-numberline", 4, seed=0)
    random.seed(0)
    pool.reset()
    pool.step(["+"] * 4)
    snap = pickle.dumps(pool.snapshot())
    random.seed(1)  # some env's start position differs on the replay
    with pytest.raises(RuntimeError, match="replayed from the checkpoint to a different state.*checkpoint_by"):
        EnvPool.restore(pickle.loads(snap))
