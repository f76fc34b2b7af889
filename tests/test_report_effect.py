"""The report's effect section: position ranges, range losses and recall means from a run's files."""

from __future__ import annotations

import pytest

from prolong.config import load_recipe
from prolong.report import effect_section, mean_score, position_ranges, range_loss


def _perplexity(seq_len: int, losses: list[float]) -> dict:
    width = seq_len // len(losses)
    buckets = [{"start": i * width, "end": (i + 1) * width, "loss": loss} for i, loss in enumerate(losses)]
    return {"seq_len": seq_len, "documents": 2, "buckets": buckets}


def test_position_ranges_split_at_the_base_length_and_each_longer_eval_length() -> None:
    assert position_ranges(512, 8192, [512, 1024, 2048, 4096, 8192]) == [
        (0, 512), (512, 1024), (1024, 2048), (2048, 4096), (4096, 8192)]
    assert position_ranges(512, 512, [512, 2048]) == [(0, 512)]  # nothing beyond the base


def test_range_loss_averages_the_buckets_inside_and_refuses_an_empty_range() -> None:
    result = _perplexity(1024, [4.0, 3.0, 5.0, 7.0])
    assert range_loss(result, 0, 512) == pytest.approx(3.5)
    assert range_loss(result, 512, 1024) == pytest.approx(6.0)
    with pytest.raises(ValueError, match="no bucket"):
        range_loss(result, 100, 200)


def test_mean_score_filters_lengths() -> None:
    summary = {"tasks": {"a": {"512": 50.0, "2048": 0.0}, "b": {"512": 100.0, "2048": 10.0}}}
    assert mean_score(summary, lambda n: n <= 512) == pytest.approx(75.0)
    assert mean_score(summary, lambda n: n > 512) == pytest.approx(5.0)
    assert mean_score(summary, lambda n: n > 8192) is None


def test_effect_section_says_which_way_each_number_went() -> None:
    recipe = load_recipe("tiny-demo", output_dir="/tmp/run")
    # loss by position: the pretraining stages; recall: the passkey-tuned base against the final model
    base, extended = recipe.stages[0].name, "stage2-16k"
    before, after = f"before ({recipe.base_stage().name})", f"after ({recipe.stages[-1].name})"
    rising = _perplexity(8192, [5.0] * 2 + [6.0] * 14)  # 512-token buckets: base fails beyond 512
    flat = _perplexity(8192, [5.0] * 16)
    one = 100 / recipe.eval.num_examples  # a score step of one example
    summaries = {before: {"tasks": {"niah": {"512": 50.0, "2048": 0.0}, "passkey": {"512": 100.0, "2048": 2 * one}}},
                 after: {"tasks": {"niah": {"512": 40.0, "2048": 25.0}, "passkey": {"512": 100.0, "2048": 2.5 * one}}}}
    short = {base: _perplexity(512, [6.0, 5.0, 4.0, 3.5]), extended: _perplexity(512, [6.0, 5.95])}
    text = effect_section(recipe, summaries, {base: rising, extended: flat}, short)
    assert f"Seed {recipe.seed}" in text
    assert "from 5.000 to 5.933 (+0.933 nats: it fails there)" in text
    assert f"{extended} has 5.000 beyond 512 (-0.933 vs the base)" in text
    assert "6.000 and at 384-512 3.500 (-2.500: lower late in the document: some use of context)" in text
    assert f"niah (x100, {recipe.eval.num_examples} examples a length): at <= 512 tokens {before} 50.0, " \
           f"{after} 40.0; at 1K, 2K, 4K, 8K {before} 0.0, {after} 25.0 (+25.0: extension beats the base there)." \
           in text
    assert f"(+{one / 2:.1f}: within one example)." in text  # passkey: half an example's difference
    assert "(-0.050: little gain from context (under 0.1 nats))" in text
