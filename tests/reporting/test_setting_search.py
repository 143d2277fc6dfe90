"""The teacher's searches run in rounds, each round's generations scored by a given function (as Ray workers score
them): the schedules of the searches run here, at every anchor setting."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from envs.pipelines import prepare_pipeline
from envs.sampling import SamplingSetting
from envs.schedulers import SchedulerSwitch
from reporting.schedule_search import Generation
from reporting.setting_search import SettingSearches, search_in_rounds, search_settings
from runtime import EngineOptions

OPTIONS = EngineOptions(groups=2, probe_blocks=0, forecast_order=1)
SAMPLES = {"conditions": [1, 2], "seeds": [5, 6], "guidance": 2.0, "engine_options": OPTIONS}


@pytest.mark.parametrize("per_sample", [False, True])
def test_searching_in_rounds_finds_what_searching_here_finds(tiny_digits_dir: Path, per_sample: bool) -> None:
    ddim, dpm = SamplingSetting("ddim", 5), SamplingSetting("dpmsolver++", 4)
    budgets = [0.5, 0.3]
    options = {"sweeps": 1, "sweeps_at": {dpm: 0}, "per_sample": per_sample, **SAMPLES}
    here = search_settings(str(tiny_digits_dir), [ddim, dpm], budgets, **options)

    pipe = prepare_pipeline(str(tiny_digits_dir))
    scorer = SettingSearches(pipe, SchedulerSwitch(pipe), dict(SAMPLES))
    rounds: list[list[SamplingSetting]] = []

    def score(generations: list[tuple[SamplingSetting, Generation]]) -> list[torch.Tensor]:
        rounds.append([setting for setting, _ in generations])
        return [scorer.score(setting, generation) for setting, generation in generations]

    found = search_in_rounds([ddim, dpm], budgets, score, **options)
    assert list(found) == [ddim, dpm]
    for setting in (ddim, dpm):
        for mine, theirs in zip(here[setting], found[setting], strict=True):
            for a, b in zip(mine if per_sample else [mine], theirs if per_sample else [theirs], strict=True):
                np.testing.assert_array_equal(a.schedule, b.schedule)
                assert (a.budget, a.psnr, a.start_psnr, a.evaluations) == (
                    b.budget,
                    b.psnr,
                    b.start_psnr,
                    b.evaluations,
                )
    assert set(rounds[0]) == {ddim, dpm}  # every search's starting spacings in the first round
    assert all(setting == ddim for setting in rounds[1])  # the anchor without sweeps is done after its start
