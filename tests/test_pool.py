"""EnvPool: in-process and subprocess workers agree; a crashed or hung worker is restarted and the epoch completes."""

import os
import signal
import time

import numpy as np

from selu_lightning.envs.base import register_env
from selu_lightning.envs.cards.numberline import NumberLineEnv
from selu_lightning.envs.pool import EnvPool

from helpers import cpu_trainer, tiny_data, tiny_module


@register_env("test-stub-hanging-numberline")
class HangingNumberLineStub(NumberLineEnv):
    """Test double: NumberLine whose 3rd step of its first episode never returns (a hung simulator)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.steps_taken = 0

    def step(self, action):
        self.steps_taken += 1
        if self.steps_taken == 3:
            time.sleep(3600)
        return super().step(action)


def play(pool, n_steps):
    pool.reset()
    trace = []
    for t in range(n_steps):
        out = pool.step(["+" if t % 3 else "-"] * pool.num_envs)
        trace.append([(o.reward, o.terminated, o.truncated, s.text) for o, s in zip(out, pool.states)])
    return trace


def test_subprocess_workers_match_in_process():
    a = EnvPool("numberline", 3, seed=5, workers="inprocess")
    b = EnvPool("numberline", 3, seed=5, workers="subprocess")
    try:
        assert play(a, 25) == play(b, 25)
        assert np.array_equal(a.states[0].image, b.states[0].image)
    finally:
        a.close()
        b.close()


def test_killed_worker_is_restarted_and_the_step_is_a_truncation():
    pool = EnvPool("numberline", 2, seed=0, workers="subprocess")
    try:
        pool.reset()
        before = pool.states[1]
        os.kill(pool.handles[1].process.pid, signal.SIGKILL)
        out = pool.step(["+", "+"])
        assert out[1].restarted and out[1].truncated and out[1].episode is None
        assert out[1].final_state is before  # bootstraps from the last state seen
        assert not out[0].restarted and pool.restarts == 1
        assert pool.handles[1].process.is_alive()
        pool.step(["-", "-"])  # the replacement works
    finally:
        pool.close()


def test_hung_worker_times_out_and_is_restarted():
    pool = EnvPool("test-stub-hanging-numberline", 1, seed=0, workers="subprocess", step_timeout=2.0)
    try:
        pool.reset()
        outcomes = [pool.step(["+"])[0] for _ in range(3)]
        restarted = [o for o in outcomes if o.restarted]
        assert len(restarted) == 1 and pool.restarts == 1
    finally:
        pool.close()


def test_epoch_completes_when_a_worker_is_killed_mid_rollout(tmp_path):
    module = tiny_module()
    data = tiny_data(env_workers="subprocess", num_envs=2, steps_per_epoch=8)
    calls = {"n": 0}
    original = module.decide

    def decide_and_kill(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2 and data.pool is not None:
            os.kill(data.pool.handles[0].process.pid, signal.SIGKILL)
        return original(*args, **kwargs)

    module.decide = decide_and_kill
    cpu_trainer(tmp_path).fit(module, data)
    assert data.last_rollout.env_restarts == 1
    assert data.last_rollout.num_steps == 8
    assert module.trainer.logged_metrics["rollout/env_restarts"] == 1
