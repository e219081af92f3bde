"""What a latent action space can say: on demonstration replies (teacher-forced), how often the world model
decodes the reply token given the IDM's codes and given the code policy's argmax codes (against the frozen LM's
own greedy token), and how many different tokens the K codes can produce at each reply position (1: the codes
change nothing there; RL over codes can only explore where it is above 1).

    python tools/rl4vlm_cpu_results.py ... (or the recipes) builds the space; then
    python tools/latent_space_report.py -c configs/latent/policy_bc_numberline.yaml --examples 48 -- \\
        --model.latent_init=<policy_bc run>/checkpoints/last.ckpt \\
        --model.policy.init_from=<sft run>/checkpoints/last.ckpt --data.demonstrations=demos/numberline

Everything after ``--`` goes to the config as ``selu fit`` options would. Prints one JSON line (``--out``: also
to a file), with the reply positions whose codes reach more than one token (``--show`` of them).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from selu_lightning.cli import quiet_noise
from selu_lightning.data.store import TrajectoryStore
from selu_lightning.latent import vlm_lm_head, vlm_norm
from selu_lightning.latent.views import sequence_view
from selu_lightning.modules.actor_sft import response_example

sys.path.insert(0, str(Path(__file__).resolve().parent))  # as `python tools/<tool>.py` has it, for importers too
from config_tool import build_cli, emit, split_argv  # noqa: E402


@torch.no_grad()
def report(module: Any, episodes: list, examples: int, show: int) -> dict[str, Any]:
    policy, latent = module.policy, module.latent
    samples = [response_example(policy, s.prompt, s.frame, s.response, True) for t in episodes for s in t.steps]
    samples = samples[:examples]
    view = sequence_view(policy, samples, with_image=True)
    hf = policy.hf_model
    norm, head = vlm_norm(hf), vlm_lm_head(hf)
    h, targets = view.hidden, view.targets
    scored = view.target_mask & view.response_mask
    base = head(h).float().argmax(-1)
    idm, code_policy = latent.idm(h).argmax(-1), latent.policy(h).argmax(-1)
    reach: list[int] = []
    choices: Counter[str] = Counter()
    tok = policy.tokenizer
    k = latent.config.num_codes
    for i in range(len(samples)):
        positions = scored[i].nonzero().flatten()
        hs = h[i, positions]
        tokens = torch.stack([latent.world.logits(hs, latent.codebook.embed(torch.full((len(positions),), c)), norm,
                                                  head).argmax(-1) for c in range(k)])  # [K, n] fmt: skip
        for j, pos in enumerate(positions.tolist()):
            reachable = sorted(set(tokens[:, j].tolist()))
            reach.append(len(reachable))
            if len(reachable) > 1:
                said = tok.decode([int(targets[i, pos])])
                choices[f"{said!r} -> {' | '.join(repr(tok.decode([t])) for t in reachable)}"] += 1

    def accuracy(pred: torch.Tensor) -> float:
        return float((pred[scored] == targets[scored]).float().mean())

    world = {name: latent.world.logits(h[scored], latent.codebook.embed(codes[scored]), norm, head).argmax(-1)
             for name, codes in (("idm", idm), ("policy", code_policy))}  # fmt: skip
    return {
        "reply_tokens": int(scored.sum()),
        "base_lm_accuracy": accuracy(base),
        "world_accuracy_idm_codes": float((world["idm"] == targets[scored]).float().mean()),
        "world_accuracy_policy_codes": float((world["policy"] == targets[scored]).float().mean()),
        "tokens_reachable_per_position": sum(reach) / max(len(reach), 1),
        "positions_with_a_choice": sum(r > 1 for r in reach) / max(len(reach), 1),
        "choices": dict(choices.most_common(show)),
    }


def main(argv: list[str] | None = None) -> None:
    quiet_noise()  # no per-load progress bars or Lightning tips between the tool's own lines
    own, overrides = split_argv(argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", required=True, help="a LatentActionPretrain recipe")
    parser.add_argument("--examples", type=int, default=48, help="demonstration steps to read")
    parser.add_argument("--show", type=int, default=10, help="most frequent choice positions to list")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(own)
    cli = build_cli(args.config, overrides)
    module = cli.model
    if getattr(module, "latent_config", None) is None or module.hparams.get("latent_init") is None:
        parser.error("the config must build a LatentActionPretrain with --model.latent_init=<checkpoint>")
    module.configure_model()
    module.eval()
    episodes = TrajectoryStore(cli.datamodule.demonstrations).read()
    result = report(module, episodes, args.examples, args.show)
    emit({"latent_init": module.hparams.latent_init, **result}, args.out)


if __name__ == "__main__":
    main()
