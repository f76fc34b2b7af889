"""Token shares of the final SFT mix: synthetic conversations mixed with short chats through the
project's data pipeline (build the SFT stage's shards, then read its StageMixture)."""

from __future__ import annotations

from collections import Counter

import pytest

from prolong.data.build import build_stage
from prolong.data.mixture import StageMixture
from prolong.synth.generators import make_generator
from prolong.synth.pipeline import run_synth


@pytest.mark.parametrize("share", [0.03, 0.10, 0.50])
def test_synthetic_token_share_of_the_sft_mix(make_recipe, chat_server, share: float) -> None:
    recipe = make_recipe(
        synth_share=share, endpoint=chat_server.url, endpoint_model="tiny", num_examples=16, max_new_tokens=64
    )
    run_synth(recipe, generator=make_generator(recipe.synth, backoff_s=0.01), show_progress=False)
    stage = recipe.stages[0]
    build_stage(recipe, stage, workers=1, show_progress=False)
    mixture = StageMixture.open(recipe.data.shard_dir, stage, recipe.seed)
    tokens: Counter[str] = Counter()
    assistant_tokens: Counter[str] = Counter()
    for index in range(3000):
        sequence = mixture[index]
        domain = mixture.domain_of(index)
        tokens[domain] += len(sequence.input_ids)
        assistant_tokens[domain] += int(sequence.loss_mask.sum())
    measured = tokens["synth"] / sum(tokens.values())
    print(f"share {share}: measured {measured:.4f} over {sum(tokens.values()):,} tokens")
    assert abs(measured - share) < 0.01, f"synthetic share of tokens {measured:.4f}, target {share}"
    # Synthetic examples are long prompts with short answers: far fewer of their tokens carry a loss.
    assert assistant_tokens["synth"] / tokens["synth"] < assistant_tokens["chat"] / tokens["chat"]
