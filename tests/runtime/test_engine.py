"""Engine contract on a tiny DiT: identity, per-sample sub-batches, contexts, generations, fallbacks, errors."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

import runtime
from policies import FORA, AlwaysCompute, FirstBlockThreshold, TaylorSeer
from runtime import Action
from runtime.diffusers_internals import CacheContext, _set_cache_context
from tests.runtime.toy_models import ScriptedPolicy, denoise_dit, tiny_dit


def test_always_compute_is_bit_identical_and_disable_restores() -> None:
    model = tiny_dit()
    reference = denoise_dit(model, [3, 7])
    engine = runtime.enable_cache(model, AlwaysCompute())
    assert torch.equal(denoise_dit(model, [3, 7]), reference)
    summary = engine.summary()
    assert summary["computed_fraction"] == 1.0 and summary["flops_speedup"] == 1.0
    runtime.disable_cache(model)
    assert engine.summary() == summary  # the statistics outlive the hooks
    assert not hasattr(model, "_diffusers_hook")
    assert all(not hasattr(block, "_diffusers_hook") for block in model.transformer_blocks)
    assert torch.equal(denoise_dit(model, [3, 7]), reference)


def test_enable_cache_on_a_pipeline_hooks_its_transformer() -> None:
    class Pipeline:
        transformer = tiny_dit()
        scheduler = None

    pipe = Pipeline()
    engine = runtime.enable_cache(pipe, AlwaysCompute())
    assert runtime.get_engine(pipe.transformer) is engine and engine.scheduler is None
    runtime.disable_cache(pipe)
    assert runtime.get_engine(pipe.transformer) is None
    with pytest.raises(TypeError, match=r"takes a transformer module or a pipeline with one, got a object"):
        runtime.enable_cache(object(), AlwaysCompute())


@pytest.mark.parametrize("interval", [2, 3])
def test_fora_computed_fraction_and_flops(interval: int) -> None:
    model, steps, depth = tiny_dit(depth=6), 7, 6
    engine = runtime.enable_cache(model, FORA(interval), groups=5, probe_blocks=1)
    denoise_dit(model, [1], steps=steps)
    summary = engine.summary()
    computed_steps = math.ceil(steps / interval)
    assert summary["computed_fraction"] == pytest.approx((1 + (depth - 1) * computed_steps / steps) / depth)
    assert summary["per_block"][0] == 1.0
    assert summary["per_block"][1:] == pytest.approx([computed_steps / steps] * (depth - 1))
    costs = engine.costs
    full = costs.full_flops
    spent = costs.always_flops + costs.block_flops[0] + float(costs.block_flops[1:].sum()) * computed_steps / steps
    assert summary["flops_speedup"] == pytest.approx(full / spent)
    assert costs.always_flops > 0 and bool((costs.block_flops > 0).all())


def test_per_sample_sub_batches_equal_running_each_sample_alone() -> None:
    model = tiny_dit(depth=5)
    labels = [2, 5, 8]

    def script(step: int, sample: int, group: int) -> Action:
        if step == 0:
            return Action.COMPUTE
        return Action((step + sample + group) % 3)

    engine = runtime.enable_cache(model, ScriptedPolicy(script), groups=4, forecast_order=1)
    batched = denoise_dit(model, labels, steps=5)
    assert engine.summary()["forecasts"] > 0 and engine.summary()["reuses"] > 0
    runtime.disable_cache(model)
    for index, label in enumerate(labels):
        runtime.enable_cache(model, ScriptedPolicy(script, sample_ids=[index]), groups=4, forecast_order=1)
        alone = denoise_dit(model, [label], steps=5)
        runtime.disable_cache(model)
        rows = [index, index + len(labels)]  # [cond, uncond] halves of this sample
        torch.testing.assert_close(batched[:, rows], alone, rtol=1e-5, atol=1e-5)


def test_cfg_halves_share_one_decision_and_observation_uses_cond_half() -> None:
    model = tiny_dit()
    policy = ScriptedPolicy(lambda step, sample, group: Action.COMPUTE if step % 2 == 0 else Action.REUSE)
    engine = runtime.enable_cache(model, policy)
    denoise_dit(model, [4, 6], steps=3)
    assert policy.observations[0].num_samples == 2
    assert engine.state_manager.get_state().layout is runtime.CfgLayout.COND_UNCOND
    runtime.disable_cache(model)
    # A subclass of a known transformer batches guidance as its base class does.
    subclassed = tiny_dit()
    subclassed.__class__ = type("MyDiT", (type(subclassed),), {})
    engine = runtime.enable_cache(subclassed, AlwaysCompute())
    denoise_dit(subclassed, [4, 6], steps=2)
    assert engine.state_manager.get_state().layout is runtime.CfgLayout.COND_UNCOND
    runtime.disable_cache(subclassed)
    # Without guidance an even batch holds four samples, not two cond/uncond pairs: its halves differ.
    policy = ScriptedPolicy(lambda step, sample, group: Action.COMPUTE if step % 2 == 0 else Action.REUSE)
    engine = runtime.enable_cache(model, policy)
    denoise_dit(model, [4, 6, 1, 2], steps=3, cfg=False)
    assert policy.observations[0].num_samples == 4
    assert engine.state_manager.get_state().layout is runtime.CfgLayout.NONE
    runtime.disable_cache(model)
    runtime.enable_cache(model, AlwaysCompute(), cfg_layout="cond_uncond")
    with pytest.raises(ValueError, match="cfg_layout='none'"):
        denoise_dit(model, [4], steps=2, cfg=False)


def test_set_budget_and_failed_enable_leave_a_usable_model() -> None:
    model = tiny_dit()
    engine = runtime.enable_cache(model, FORA(2))  # no groups given: the engine's default
    engine.set_budget(0.25)
    assert engine.budget == 0.25
    with pytest.raises(ValueError, match="compute fraction"):
        engine.set_budget(torch.tensor([0.5, float("nan")]))
    runtime.disable_cache(model)

    class NoTimestep(torch.nn.Module):
        """Blocks the engine can hook, under a forward without the ``timestep`` it needs."""

        def __init__(self) -> None:
            super().__init__()
            self.transformer_blocks = model.transformer_blocks

        def forward(self, hidden_states: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return hidden_states

    wrapper = NoTimestep()
    with pytest.raises(ValueError, match="no 'timestep' argument"):
        runtime.enable_cache(wrapper, AlwaysCompute())
    assert not any(hasattr(module, "_diffusers_hook") for module in wrapper.modules())  # no hook left behind
    assert runtime.get_engine(wrapper) is None


def test_the_policys_own_flops_are_not_counted_as_the_models() -> None:
    from policies import LearnedPolicy

    model = tiny_dit()
    options = {"groups": 2, "probe_blocks": 1, "forecast_order": 1}
    names = runtime.feature_names(2)
    torch.manual_seed(0)
    network = LearnedPolicy(  # a wide actor, so its matmuls would show in the costs
        [torch.nn.Linear(len(names), 512)], torch.nn.Linear(512, 6), feature_names=names, engine_options=options
    )
    costs = []
    for policy in (AlwaysCompute(), network):
        engine = runtime.enable_cache(model, policy, **options)
        denoise_dit(model, [1, 2], steps=2)
        costs.append(engine.costs)
        runtime.disable_cache(model)
    assert costs[1].always_flops == costs[0].always_flops
    assert torch.equal(costs[1].block_flops, costs[0].block_flops)


def test_per_token_timesteps_with_a_clean_first_token_are_one_generation() -> None:
    model = tiny_dit()
    engine = runtime.enable_cache(model, FORA(2))
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for t in (900.0, 600.0, 300.0, 100.0):
            timestep = torch.tensor([0.0, t])  # one row already clean, as a conditioning frame's tokens are
            model(latents, timestep=timestep, class_labels=torch.tensor([1, 2]))
    summary = engine.summary()
    runtime.disable_cache(model)
    assert summary["generations"] == 1 and summary["computed_fraction"] < 1.0


def test_contexts_keep_separate_state_and_new_generations_are_detected() -> None:
    model = tiny_dit()
    alone = denoise_dit(model, [1], steps=4)
    engine = runtime.enable_cache(model, FORA(2))
    cached_alone = denoise_dit(model, [1], steps=4)
    engine.reset()

    latents = torch.randn(4, 8, 8, generator=torch.Generator().manual_seed(1)).expand(2, -1, -1, -1)
    labels = torch.tensor([1, 1000])
    outputs: dict[str, list[torch.Tensor]] = {"cond": [], "uncond": []}
    x = {"cond": latents.clone(), "uncond": latents.clone()}
    with torch.no_grad():
        for t in torch.linspace(950, 50, 4).long():
            for name in ("cond", "uncond"):
                _set_cache_context(model, CacheContext(name))
                out = model(x[name], timestep=t.expand(2), class_labels=labels).sample
                x[name] = x[name] - 0.05 * out
                outputs[name].append(out)
    _set_cache_context(model, None)
    assert set(engine.state_manager.states()) == {"cond", "uncond"}
    assert torch.equal(torch.stack(outputs["cond"]), torch.stack(outputs["uncond"]))
    assert torch.equal(torch.stack(outputs["cond"]), cached_alone)
    assert not torch.equal(cached_alone, alone)

    engine.reset()
    denoise_dit(model, [1], steps=4)
    denoise_dit(model, [1], steps=4)
    assert engine.summary()["generations"] == 2
    assert engine.summary()["steps"] == 8


def _poisoning_policy(engine_of: Callable[[], runtime.CacheEngine], skip: Action) -> runtime.PolicyLike:
    """Computes steps 0 and 1, then skips; group 1's residual of the first row at step 1 is not finite."""

    class Poison:
        forecast_order = 1

        def act(self, observation: runtime.Observation) -> torch.Tensor:
            if observation.step_index == 1:
                history = engine_of().state_manager.get_state().groups[1].history
                push = history.push

                def overflowing_push(rows: torch.Tensor, residual: tuple, time: float) -> None:
                    residual[0][0, 0, 0] = float("inf")  # e.g. output minus input overflowing in float16
                    push(rows, residual, time)

                history.push = overflowing_push
            action = Action.COMPUTE if observation.step_index <= 1 else skip
            return torch.full((observation.num_samples, observation.num_groups), int(action))

    return Poison()


@pytest.mark.parametrize("skip", [Action.REUSE, Action.FORECAST], ids=lambda action: action.name.lower())
def test_non_finite_cached_residual_falls_back_to_compute(skip: Action) -> None:
    model = tiny_dit()
    reference = denoise_dit(model, [2], steps=4)
    engine = runtime.enable_cache(model, _poisoning_policy(lambda: engine, skip))
    out = denoise_dit(model, [2], steps=4)
    summary = engine.summary()
    assert summary["fallbacks"] >= 1 and summary[f"{skip.name.lower()}s"] > 0
    assert bool(torch.isfinite(out).all())
    assert out.shape == reference.shape


@pytest.mark.parametrize("skip", [Action.REUSE, Action.FORECAST], ids=lambda action: action.name.lower())
def test_a_fallback_recomputes_both_guidance_halves_of_its_sample(skip: Action) -> None:
    model = tiny_dit()
    engine = runtime.enable_cache(model, _poisoning_policy(lambda: engine, skip))
    out = denoise_dit(model, [2, 5], steps=4)  # rows: cond 0, cond 1, uncond 0, uncond 1
    summary = engine.summary()
    assert summary["fallbacks"] >= 2 and summary["fallbacks"] % 2 == 0
    newest = engine.state_manager.get_state().groups[1].history.slot_times[0]  # per row: its latest computed time
    assert newest[0] == newest[2] and newest[1] == newest[3]  # sample 0 recomputed in both halves, sample 1 in none
    assert newest[0] < newest[1]
    assert bool(torch.isfinite(out).all())


def test_errors_name_the_fix() -> None:
    with pytest.raises(ValueError, match="BasicTransformerBlock"):
        runtime.enable_cache(torch.nn.Linear(2, 2), AlwaysCompute())
    model = tiny_dit(depth=4)
    with pytest.raises(ValueError, match="use 1 to 3 groups"):
        runtime.enable_cache(model, AlwaysCompute(), groups=8)
    with pytest.raises(ValueError, match="probe_blocks"):
        runtime.enable_cache(model, AlwaysCompute(), probe_blocks=4)
    with pytest.raises(ValueError, match="budget"):
        runtime.enable_cache(model, AlwaysCompute(), budget=1.5)
    with pytest.raises(ValueError, match="reads probe_change.*pass probe_blocks >= 1"):
        runtime.enable_cache(model, FirstBlockThreshold(0.1), probe_blocks=0)
    assert runtime.get_engine(model) is None
    with pytest.raises(ValueError, match="cfg_layout"):
        runtime.enable_cache(model, AlwaysCompute(), cfg_layout="cond-first")
    runtime.enable_cache(model, AlwaysCompute())
    with pytest.raises(ValueError, match="already enabled"):
        runtime.enable_cache(model, AlwaysCompute())
    runtime.disable_cache(model)
    with pytest.raises(ValueError, match="not enabled"):
        runtime.disable_cache(model)

    class WrongShape:
        def act(self, observation: runtime.Observation) -> torch.Tensor:
            return torch.zeros(observation.num_samples, 1, dtype=torch.int64)

    runtime.enable_cache(model, WrongShape(), groups=3)
    with pytest.raises(ValueError, match=r"\(samples, groups\)"):
        denoise_dit(model, [1], steps=2)


def test_observation_vector_is_documented_and_bounded() -> None:
    model = tiny_dit(depth=5)
    policy = ScriptedPolicy(lambda step, sample, group: Action.COMPUTE if step % 3 == 0 else Action.FORECAST)
    engine = runtime.enable_cache(model, policy, groups=4, budget=0.4)
    denoise_dit(model, [1, 2], steps=6)
    names = runtime.feature_names(4)
    assert engine.feature_names == names and len(names) == 5 + 2 * 4
    doc = runtime.observations.__doc__
    assert all(f"``{name.rsplit('_', 1)[0] if name[-1].isdigit() else name}" in doc for name in names)
    first, later = policy.observations[0], policy.observations[-1]
    assert first.action_mask[..., Action.REUSE].sum() == 0 and first.features.shape == (2, len(names))
    assert bool(later.action_mask[..., Action.FORECAST].all())
    # the flag that lets a policy skip masking is set once every group holds two steps, and never before
    assert [o.every_action_possible for o in policy.observations] == [False] * 4 + [True] * 2
    assert all(bool(o.action_mask.all()) for o in policy.observations if o.every_action_possible)
    values = torch.stack([o.features for o in policy.observations])
    assert bool(torch.isfinite(values).all())
    assert bool((values[..., names.index("budget")] == 0.4).all())
    assert bool((values[..., names.index("time")] <= 1).all()) and bool((values[..., :2] >= 0).all())
    spent = values[1:, :, names.index("compute_spent")]
    assert bool((spent < 1).any()) and bool((spent > 0).all())
    assert bool((values[2:, :, names.index("probe_change")] > 0).all())


def test_engine_runs_under_torch_compile() -> None:
    model = tiny_dit()
    engine = runtime.enable_cache(model, TaylorSeer(interval=2))
    expected = denoise_dit(model, [1, 2], steps=4)
    expected_actions = engine.summary()["actions"]
    engine.reset()
    compiled_model = torch.compile(model, backend="eager")
    for _ in range(2):  # compiling, then the compiled graphs: decisions must not be frozen into them
        assert torch.equal(denoise_dit(compiled_model, [1, 2], steps=4), expected)
    assert engine.summary()["actions"] == {k: 2 * v for k, v in expected_actions.items()}
    assert expected_actions["forecast"] > 0


def test_taylorseer_forecasts_and_reports_them() -> None:
    model = tiny_dit()
    engine = runtime.enable_cache(model, TaylorSeer(interval=2, order=2))
    assert engine.order == 2
    denoise_dit(model, [1], steps=6)
    summary = engine.summary()
    assert summary["forecasts"] > 0 and summary["fallbacks"] == 0


def test_shared_decisions_apply_the_majority_to_the_whole_batch() -> None:
    model = tiny_dit(depth=5)

    def script(step: int, sample: int, group: int) -> Action:
        if step == 0:
            return Action.COMPUTE
        return Action.REUSE if sample < 2 else Action.COMPUTE  # two of three samples reuse

    engine = runtime.enable_cache(model, ScriptedPolicy(script), groups=2, shared_decisions=True)
    denoise_dit(model, [1, 2, 3], steps=3)
    decision = engine.current_state().decision
    assert all(actions == [int(Action.REUSE)] * 2 for actions in decision.row_actions.tolist())
    assert engine.summary()["actions"]["compute"] == 3 * 2  # only the first step computes
    everything = torch.ones(2, 2, 3, dtype=torch.bool)
    shared = runtime.decisions.shared_actions(torch.tensor([[1, 0], [1, 2]]), everything)
    assert shared.tolist() == [[1, 0]] * 2  # a tie with COMPUTE goes to COMPUTE
    assert runtime.decisions.shared_actions(torch.tensor([[1, 2], [2, 1]]), everything).tolist() == [[2, 2]] * 2
    no_forecast_for_one = everything.clone()
    no_forecast_for_one[1, :, Action.FORECAST] = False
    shared = runtime.decisions.shared_actions(torch.tensor([[2, 1], [2, 1]]), no_forecast_for_one)
    assert shared.tolist() == [[0, 1]] * 2  # FORECAST is not possible for every sample: COMPUTE


@pytest.mark.parametrize("inference_mode", [False, True])
def test_recycled_residual_memory_changes_no_output(monkeypatch: pytest.MonkeyPatch, inference_mode: bool) -> None:
    """A new residual written into the memory of the one being dropped gives exactly the fresh-tensor result."""
    model = tiny_dit(depth=4)

    def generate() -> tuple[torch.Tensor, int]:
        engine = runtime.enable_cache(model, TaylorSeer(2, order=1, warmup=1), groups=2, probe_blocks=0)
        with torch.inference_mode(inference_mode):
            out = denoise_dit(model, [1, 2], steps=9)
        forecasts = engine.summary()["forecasts"]
        runtime.disable_cache(model)
        return out, forecasts

    spares = []
    spare_slot = runtime.forecast.ResidualHistory.spare_slot
    monkeypatch.setattr(
        runtime.forecast.ResidualHistory, "spare_slot", lambda self: spares.append(spare_slot(self)) or spares[-1]
    )
    recycled, forecasts = generate()
    assert forecasts > 0 and any(spare is not None for spare in spares)
    monkeypatch.setattr(runtime.forecast.ResidualHistory, "spare_slot", lambda self: None)
    fresh, _ = generate()
    assert torch.equal(recycled, fresh)


def _staggered(step: int, sample: int, group: int) -> Action:
    """Groups 0-1 and 2-3 compute at different steps and skip in between, all samples alike."""
    if step < 2 or (step == 3 and group < 2) or (step == 6 and group >= 2):
        return Action.COMPUTE
    return Action.REUSE if step == 5 else Action.FORECAST


_APPLY_SPAN = runtime.residuals.ResidualCache._apply_span


def _generate_recording_runs(
    model: torch.nn.Module, script: Callable[[int, int, int], Action], monkeypatch: pytest.MonkeyPatch, merge: bool
) -> tuple[torch.Tensor, dict, list[tuple[int, int, int]], list[tuple[int, int]]]:
    """Denoises 8 steps with ``script``.

    Returns:
        The output, the summary, each merged run (step, first, last) and the runs whose sums are kept at the end.
    """
    runs: list[tuple[int, int, int]] = []

    def recorded(self, state, first, hidden, encoder):
        output = _APPLY_SPAN(self, state, first, hidden, encoder) if merge else None
        if output is not None:
            last = max(g for g, through in enumerate(state.decision.passes_through) if through)
            runs.append((state.step_index - 1, first, last))
        return output

    monkeypatch.setattr(runtime.residuals.ResidualCache, "_apply_span", recorded)
    engine = runtime.enable_cache(model, ScriptedPolicy(script), groups=4, probe_blocks=1, forecast_order=1)
    out = denoise_dit(model, [1, 2], steps=8)
    summary, kept = engine.summary(), sorted(engine.current_state().span_sums)
    runtime.disable_cache(model)
    return out, summary, runs, kept


def test_groups_skipping_from_the_same_computed_steps_apply_their_summed_residuals(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = tiny_dit(depth=5)
    merged, summary, runs, kept = _generate_recording_runs(model, _staggered, monkeypatch, merge=True)
    # a run is the groups that skip alike from the same computed steps (order 1: the newest two; reuse: one)
    assert runs == [(2, 0, 3), (3, 2, 3), (4, 0, 1), (4, 2, 3), (5, 0, 1), (5, 2, 3), (6, 0, 1), (7, 0, 1), (7, 2, 3)]
    assert summary["merged_groups"] == sum(last - first for _, first, last in runs)

    # sums are kept only until one of their groups computes again: at the end, those of step 7's two runs
    assert kept == [(0, 1), (2, 3)]
    separate, separate_summary, _, _ = _generate_recording_runs(model, _staggered, monkeypatch, merge=False)
    assert separate_summary["merged_groups"] == 0
    assert (summary["forecasts"], summary["reuses"]) == (separate_summary["forecasts"], separate_summary["reuses"])
    torch.testing.assert_close(merged, separate, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(merged, denoise_dit(model, [1, 2], steps=8), atol=1e-4)  # work was skipped

    def per_sample(step: int, sample: int, group: int) -> Action:  # the samples differ at odd steps
        return Action.COMPUTE if sample == 1 and step % 2 else _staggered(step, sample, group)

    merged, _, runs, _ = _generate_recording_runs(model, per_sample, monkeypatch, merge=True)
    assert runs and all(step % 2 == 0 for step, _, _ in runs)  # only where every row does the same
    separate, _, _, _ = _generate_recording_runs(model, per_sample, monkeypatch, merge=False)
    torch.testing.assert_close(merged, separate, rtol=1e-5, atol=1e-6)


def test_change_features_follow_the_reference_of_the_last_computing_step() -> None:
    """``input_change`` is measured against the first-block input of the sample's last step that computed."""
    model = tiny_dit(depth=5)
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    class Checking(ScriptedPolicy):
        def act(self, observation: runtime.Observation) -> torch.Tensor:
            state = engine.current_state()
            if state.reference_input is not None and observation.step_index > 0:
                rows = state.signal_rows
                expected = runtime.forecast.relative_l1(state.first_input[rows], state.reference_input[rows])
                seen.append((observation.signals["input_change"].clone(), expected))
            return super().act(observation)

    computing_steps = {0, 2, 3, 5}
    policy = Checking(lambda step, sample, group: Action.COMPUTE if step in computing_steps else Action.REUSE)
    engine = runtime.enable_cache(model, policy, groups=2, probe_blocks=1)
    denoise_dit(model, [1, 2], steps=7)
    assert len(seen) == 6
    assert all(torch.equal(value, expected) for value, expected in seen)
    assert len({round(float(value[0]), 6) for value, _ in seen}) > 3  # the references did change


def test_block_inputs_are_replaced_by_name_positionally_or_by_keyword() -> None:
    from diffusers.models.attention import JointTransformerBlock

    from runtime.blocks import get_block_input, with_block_input
    from runtime.diffusers_internals import TransformerBlockRegistry

    metadata = TransformerBlockRegistry.get(JointTransformerBlock)  # (hidden_states, encoder_hidden_states, temb)
    hidden, encoder, temb, new = (torch.full((1,), float(i)) for i in range(4))
    args, kwargs = with_block_input(metadata, "encoder", new, (hidden, encoder), {"temb": temb})
    assert args == (hidden, new) and kwargs == {"temb": temb}
    args, kwargs = with_block_input(metadata, "hidden", new, (), {"hidden_states": hidden, "temb": temb})
    assert args == () and kwargs == {"hidden_states": new, "temb": temb}
    assert get_block_input(metadata, "hidden", args, kwargs) is new
