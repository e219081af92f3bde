"""collect_rollout's assembly by hand: auto-reset, termination vs truncation bootstrap, recorded trajectories."""

import numpy as np
import pytest

from selu_lightning.action_spaces.base import Decision
from selu_lightning.data.rollout import collect_rollout
from selu_lightning.data.trajectories import EpisodeRecorder
from selu_lightning.envs.base import TextVisualEnv, register_env
from selu_lightning.envs.pool import EnvPool

from helpers import tiny_module

@register_env("test-scripted-episodes")
class ScriptedEpisodesStubEnv(TextVisualEnv):
    """Test double: episode 0 terminates after 2 steps, episode 1 is truncated after 3, later ones run on.
    The observation text is ``"<episode>:<step>"``."""

    task_description = "Scripted."

    def __init__(self) -> None:
        super().__init__(image_size=8)
        self.episode, self.t = -1, 0

    def _obs(self):
        return {"image": np.full((8, 8, 3), self.t, np.uint8), "text": f"{self.episode}:{self.t}"}

    def _info(self, success=False):
        return {"legal_actions": ["go"], "goal": f"goal {self.episode}", "success": success}

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.episode, self.t = self.episode + 1, 0
        return self._obs(), self._info()

    def step(self, action):
        self.t += 1
        terminated = self.episode == 0 and self.t == 2
        truncated = self.episode == 1 and self.t == 3
        return self._obs(), 1.0, terminated, truncated, self._info(success=terminated)


def value_of(text: str) -> float:
    episode, step = text.split(":")
    return 10.0 * int(episode) + int(step)


class ScriptedAgent:
    """Test double: acts "go"; its value of a state is read off the state's text."""

    def decide(self, states, task, *, greedy, rng):
        return [Decision("go", -0.5, value_of(s.text), {}, "go", prompt=f"P {s.text}") for s in states]

    def state_values(self, states, task):
        return [value_of(s.text) for s in states]


def test_rollout_assembly_by_hand():
    pool = EnvPool("test-scripted-episodes", 1, seed=0)
    pool.reset()
    recorder = EpisodeRecorder(1, "train-0")
    r = collect_rollout(ScriptedAgent(), pool, 6, np.random.default_rng(0), recorder=recorder)
    col = lambda x: x[:, 0].tolist()  # noqa: E731
    assert col(r.values) == [0.0, 1.0, 10.0, 11.0, 12.0, 20.0]
    assert col(r.terminated) == [False, True, False, False, False, False]
    assert col(r.truncated) == [False, False, False, False, True, False]
    # t1 terminated: no future (its next value is never used); t4 truncated: V(final obs "1:3") = 13;
    # t5 runs on: V of the state the rollout stops in ("2:1") = 21.
    assert col(r.next_values) == [1.0, 0.0, 11.0, 12.0, 13.0, 21.0]
    assert col(r.rewards) == [1.0] * 6 and col(r.logprobs) == [-0.5] * 6
    assert [e["success"] for e in r.episodes] == [1.0, 0.0] and [e["length"] for e in r.episodes] == [2.0, 3.0]

    first, second = r.trajectories
    assert (first.end, first.truncated, first.ground_truth) == ((1, 0), False, {"success": True})
    assert [s.observation for s in first.steps] == ["0:0", "0:1"] and first.final_observation == "0:2"
    assert (second.end, second.truncated, second.final_observation) == ((4, 0), True, "1:3")
    assert [s.prompt for s in second.steps] == ["P 1:0", "P 1:1", "P 1:2"] and second.goal == "goal 1"
    assert second.final_frame is not None and int(second.final_frame[0, 0, 0]) == 3
    assert "success" not in vars(second.steps[0])  # ground truth lives only in ground_truth


def test_an_episode_spanning_two_rollouts_is_recorded_whole():
    pool = EnvPool("test-scripted-episodes", 1, seed=0)
    pool.reset()
    recorder = EpisodeRecorder(1, "train-0")
    agent, rng = ScriptedAgent(), np.random.default_rng(0)
    a = collect_rollout(agent, pool, 3, rng, recorder=recorder)  # ep0 ends at t1, ep1 starts at t2
    b = collect_rollout(agent, pool, 3, rng, recorder=recorder)  # ep1 ends at t1 of this rollout
    assert [t.episode_id for t in a.trajectories] == ["train-0-0-0"]
    (ep1,) = b.trajectories
    assert ep1.episode_id == "train-0-0-1" and [s.observation for s in ep1.steps] == ["1:0", "1:1", "1:2"]
    assert ep1.end == (1, 0)


def test_recorder_state_survives_a_checkpoint_without_frames():
    pool = EnvPool("test-scripted-episodes", 1, seed=0)
    pool.reset()
    recorder = EpisodeRecorder(1, "train-0")
    collect_rollout(ScriptedAgent(), pool, 3, np.random.default_rng(0), recorder=recorder)
    restored = EpisodeRecorder(1, "")
    restored.load_state_dict(recorder.state_dict())
    (open_,) = restored.open
    assert open_.episode_id == "train-0-0-1" and [s.observation for s in open_.steps] == ["1:0"]
    assert open_.steps[0].frame is None and restored.counts == [2]


def test_episode_end_reward_goes_to_each_finished_episodes_last_step():
    from selu_lightning.rewards import EpisodeEndReward

    seen = []

    class StepCountReward(EpisodeEndReward):
        """Test double: rewards an episode with minus its length (a judge that never reads ground truth)."""

        def score_episodes(self, trajectories):
            seen.extend(trajectories)
            return [-float(len(t.steps)) for t in trajectories]

    pool = EnvPool("test-scripted-episodes", 1, seed=0)
    pool.reset()
    r = collect_rollout(ScriptedAgent(), pool, 6, np.random.default_rng(0), recorder=EpisodeRecorder(1, "x"))
    assert StepCountReward().rewards(r)[:, 0].tolist() == [0.0, -2.0, 0.0, 0.0, -3.0, 0.0]
    # the judge sees no ground truth and no env reward (invariant 7), the rollout's own records are untouched
    assert all(t.ground_truth == {} and all(s.reward != s.reward for s in t.steps) for t in seen)
    assert r.trajectories[0].ground_truth == {"success": True} and r.trajectories[0].steps[0].reward == 1.0


def test_evaluation_stops_at_once_on_sigterm():
    """Held-out play asks after every step whether the trainer received SIGTERM, so a long evaluation (a 7B
    policy's) does not outlast a scheduler's grace period."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from selu_lightning.data.rollout import play_episodes

    module = tiny_module()
    module.configure_model()
    asked = []
    with pytest.raises(SIGTERMException):
        play_episodes(module, EnvPool("numberline", 2, seed=0), [1, 2], greedy=True, rng=np.random.default_rng(0),
                      should_stop=lambda: asked.append(1) or True)  # fmt: skip
    assert asked == [1]  # after the first step
