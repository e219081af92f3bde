"""CPU thread policy: each process's share of the node's cores, one core left over; OMP_NUM_THREADS wins."""

import pytest
import torch

from selu_lightning import threads
from selu_lightning.threads import apply_thread_policy, threads_per_process


@pytest.mark.parametrize(("cores", "processes", "expected"),
                         [(2, 1, 1), (1, 1, 1), (16, 1, 15), (16, 8, 1), (64, 8, 7), (4, 8, 1), (96, 4, 23)])  # fmt: skip
def test_threads_per_process_shares_the_cores_and_leaves_one(cores, processes, expected):
    assert threads_per_process(cores, processes) == expected


def test_threads_per_process_refuses_nonsense():
    with pytest.raises(ValueError, match=">= 1"):
        threads_per_process(0, 1)
    with pytest.raises(ValueError, match=">= 1"):
        threads_per_process(8, 0)


@pytest.fixture
def torch_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_apply_sets_the_share_and_says_so(monkeypatch, torch_threads):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "available_cores", lambda: 8)
    torch.set_num_threads(8)
    message = apply_thread_policy(2)
    assert torch.get_num_threads() == 3 and "3 CPU thread(s)" in message and "OMP_NUM_THREADS" in message
    assert apply_thread_policy(2) is None  # already set: nothing to say


def test_omp_num_threads_chosen_by_the_user_wins(monkeypatch, torch_threads):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    monkeypatch.setattr(threads, "available_cores", lambda: 8)
    torch.set_num_threads(2)
    assert apply_thread_policy(1) is None and torch.get_num_threads() == 2


@pytest.mark.parametrize("share", [True, False])
def test_the_selu_command_shares_cores_and_a_program_keeps_its_threads(share, monkeypatch, tmp_path, torch_threads):
    """``selu`` (``main``) builds the CLI with ``share_cores=True``: one process on 4 cores gets 3 threads; a
    program that builds ``SeluCLI`` itself keeps its own setting."""
    from pathlib import Path

    from selu_lightning.cli import SeluCLI

    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "available_cores", lambda: 4)
    torch.set_num_threads(1)
    SeluCLI(args=["-c", "configs/quickstart.yaml", f"--trainer.logger.init_args.save_dir={tmp_path}"], run=False,
            share_cores=share)  # fmt: skip
    assert torch.get_num_threads() == (3 if share else 1)
