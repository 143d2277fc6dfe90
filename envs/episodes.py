"""A batch of episodes run as one batched generation: the core both environments share."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from gymnasium import spaces

import runtime
from runtime.observations import feature_names, feature_of

from .conditions import Condition
from .config import EnvConfig
from .pipelines import describe, make_sampler, weights_fingerprint
from .references import Reference, ReferenceStore
from .rewards import final_rewards, step_rewards
from .sampling import SamplingSetting, default_setting
from .schedulers import SchedulerSwitch
from .session import BridgePolicy, Decision, DenoisingSession, Finished


@dataclass
class StepResult:
    """What one step of a batch of episodes returns (per sample)."""

    observations: np.ndarray
    rewards: np.ndarray
    done: bool
    infos: list[dict[str, Any]] = field(default_factory=list)


class EpisodeBatch:
    """Runs ``N`` episodes (conditions, seeds, budgets) as one batched denoising run through the cache engine.

    Each batch runs with one :class:`~envs.sampling.SamplingSetting` (scheduler and step count); references are
    kept per setting.

    Args:
        config: Environment configuration.
        pipe: A loaded pipeline (or ``envs.pipelines.Sampler``) to use instead of loading ``config.model`` (its
            transformer gets the engine).
    """

    def __init__(self, config: EnvConfig, pipe: Any = None) -> None:
        self.config = config
        self.sampler = make_sampler(config, pipe, scheduler="default")  # each batch's is set by the switch
        self.pipe = self.sampler.pipe
        self.schedulers = SchedulerSwitch(self.pipe)
        self.bridge = BridgePolicy(config.forecast_order, feature_names(config.groups, tuple(config.features)))
        self.engine = runtime.enable_cache(
            self.pipe,  # its scheduler, switched per batch, is read at every generation
            self.bridge,
            config.engine_options,
            cfg_layout=self.sampler.family.layout(config.guidance_scale),
        )
        self._weights = weights_fingerprint(self.pipe.transformer)
        self._stores: dict[SamplingSetting, ReferenceStore] = {}
        self.setting = default_setting(config)
        self.references = self._references(self.setting)
        names = self.engine.feature_names
        low = np.array([feature_of(n)[0].low for n in names], dtype=np.float32)
        high = np.array([feature_of(n)[0].high for n in names], dtype=np.float32)
        self.observation_space = spaces.Box(low, high, dtype=np.float32)
        self.action_space = spaces.MultiDiscrete([runtime.NUM_ACTIONS] * self.engine.num_groups)
        self.session: DenoisingSession | None = None
        self._decision: Decision | None = None
        self._episode: dict[str, Any] = {}

    @property
    def feature_names(self) -> tuple[str, ...]:
        """Observation features, in vector order."""
        return self.engine.feature_names

    def begin(
        self,
        conditions: Sequence[Condition],
        seeds: Sequence[int],
        budgets: Sequence[float] | None,
        setting: SamplingSetting | None = None,
        references: Sequence[Reference] | None = None,
    ) -> np.ndarray:
        """Starts the episodes with ``setting`` (default: the configured one); returns the first observations.

        ``references``: the uncached trajectories of these conditions and seeds at ``setting``, when they come from
        elsewhere (e.g. a store shared by several batches); by default this batch's own store gives them.
        """
        self.abort()
        self.setting = setting if setting is not None else default_setting(self.config)
        self.references = self._references(self.setting)
        references = list(references) if references is not None else self.references.get(conditions, seeds)
        budget_tensor = None if budgets is None else torch.tensor(list(budgets), dtype=torch.float64)
        self.engine.set_budget(budget_tensor)
        self._episode = {
            "conditions": list(conditions),
            "seeds": list(seeds),
            "budgets": None if budgets is None else list(budgets),
            "references": references,
            "potential": np.zeros(len(conditions)),
            "spent": np.zeros(len(conditions)),
            "step": 0,
            "steps": self.setting.steps,
        }
        self._step_costs: list[np.ndarray] = []
        self.session = DenoisingSession(self.bridge, self._generate_cached)
        message = self.session.start()
        if not isinstance(message, Decision):
            raise RuntimeError("The pipeline finished without asking the engine for a decision.")
        self._decision = message
        return self.observations()

    def observations(self) -> np.ndarray:
        """The pending decision's observations ``(N, F)``."""
        return self._decision.observation.features.numpy().astype(np.float32)

    def action_masks(self) -> np.ndarray:
        """``(N, groups * 3)`` possible actions, flattened per group as MaskablePPO expects."""
        mask = self._decision.observation.action_mask
        return mask.reshape(mask.shape[0], -1).numpy()

    def step(self, actions: np.ndarray) -> StepResult:
        """Applies ``(N, groups)`` actions to the current denoising step and runs it."""
        actions = torch.as_tensor(np.asarray(actions), dtype=torch.int64).reshape(-1, self.engine.num_groups)
        observation = self._decision.observation
        actions = runtime.safe_actions(actions.clamp(0, runtime.NUM_ACTIONS - 1), observation.action_mask)
        message = self.session.send(actions)
        episode = self._episode
        step = episode["step"]
        cost = self._step_costs[step]
        episode["spent"] += cost
        references: list[Reference] = episode["references"]
        latents = self.session.latents[step]
        reference_latents = torch.stack([r.latents[step] for r in references])
        rewards, episode["potential"] = step_rewards(
            self.config.reward, cost, episode["steps"], latents, reference_latents, episode["potential"]
        )
        episode["step"] = step + 1
        if isinstance(message, Decision):
            self._decision = message
            return StepResult(self.observations(), rewards.astype(np.float32), False, [{} for _ in rewards])
        terminal, infos = self._finish(message)
        return StepResult(self.observations(), (rewards + terminal).astype(np.float32), True, infos)

    def abort(self) -> None:
        """Abandons any unfinished episodes (their generation is forgotten; the engine's statistics are kept)."""
        if self.session is not None:
            self.session.abort()
            self.session = None
            # An abandoned generation must not read as the start of the next one, whose first time may be lower.
            self.engine.forget_generation()

    def close(self) -> None:
        """Abandons episodes and removes the engine from the transformer."""
        self.abort()
        if runtime.get_engine(self.pipe.transformer) is self.engine:
            runtime.disable_cache(self.pipe.transformer)

    # -- internals -------------------------------------------------------------------------------------------

    def _last_step_cost(self) -> np.ndarray:
        """Per sample, the fraction of an uncached step's FLOPs the last step spent, over all its passes (one per
        cache context when guidance runs as separate passes)."""
        per_sample, rows_per_sample = None, 0
        for state in self.engine.state_manager.states().values():
            if state.last_step_fraction is None:
                continue
            spent = torch.zeros(state.samples, dtype=torch.float64).index_add(
                0, state.row_samples, state.last_step_fraction.double().cpu()
            )
            per_sample = spent if per_sample is None else per_sample + spent
            rows_per_sample += state.rows // state.samples
        return (per_sample / rows_per_sample).numpy()

    def _finish(self, message: Finished) -> tuple[np.ndarray, list[dict[str, Any]]]:
        from zoo.metrics import capped_psnr, psnr, ssim

        episode, reward_config = self._episode, self.config.reward
        references: list[Reference] = episode["references"]
        reference_images = torch.stack([r.image for r in references]).float()
        images = message.images.float().clamp(0, 1)
        psnr_values = psnr(images, reference_images).double()
        ssim_values = ssim(images, reference_images).double()
        capped = capped_psnr(images, reference_images, reward_config.psnr_cap).double()
        fraction = episode["spent"] / episode["steps"]
        terminal = final_rewards(reward_config, ssim_values, capped, fraction, episode["budgets"])
        infos = []
        for i in range(len(references)):
            infos.append(
                {
                    "psnr": float(psnr_values[i]),
                    "ssim": float(ssim_values[i]),
                    "compute_fraction": float(fraction[i]),
                    "flops_speedup": float(1.0 / fraction[i]),
                    "budget": None if episode["budgets"] is None else float(episode["budgets"][i]),
                    "condition": episode["conditions"][i],
                    "seed": episode["seeds"][i],
                    "num_inference_steps": episode["steps"],
                    "scheduler": self.setting.scheduler,
                    "image": images[i],
                    "reference_image": reference_images[i],
                }
            )
        self.session = None
        return terminal, infos

    def _generate_cached(self, latents: list[torch.Tensor]) -> torch.Tensor:
        episode = self._episode
        return self.sampler(
            episode["conditions"],
            episode["seeds"],
            episode["steps"],
            self.config.guidance_scale,
            latents,
            on_step=lambda: self._step_costs.append(self._last_step_cost()),
        )

    def reference_store(self, setting: SamplingSetting) -> ReferenceStore:
        """The references of ``setting`` (one store each); switches the pipeline to ``setting``'s scheduler."""
        return self._references(setting)

    def reference_identity(self, setting: SamplingSetting) -> dict[str, Any]:
        """Everything besides condition and seed that a reference trajectory at ``setting`` depends on."""
        identity = {
            **describe(self.pipe),
            "weights": self._weights,
            "steps": setting.steps,
            "guidance": self.config.guidance_scale,
        }
        config = self.config
        if self.sampler.family.takes_prompts or config.dtype != "float32" or config.device != "cpu":
            identity.update(
                call=self.sampler.call_kwargs,
                negative_prompt=self.sampler.negative_prompt,
                dtype=config.dtype,
                device=torch.device(config.device).type,
            )
        return identity

    def generate_references(
        self, conditions: Sequence[Condition], seeds: Sequence[int], setting: SamplingSetting
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """One uncached generation at ``setting`` (no episode may be running): per-step latents and images."""
        self.abort()
        self.schedulers.use(setting.scheduler)
        return self._generate_references(conditions, seeds, setting.steps)

    def _references(self, setting: SamplingSetting) -> ReferenceStore:
        """Switches the pipeline to ``setting``'s scheduler; returns the setting's references (one store each)."""
        self.schedulers.use(setting.scheduler)
        if setting not in self._stores:
            generate_setting = functools.partial(self._generate_references, steps=setting.steps)
            self._stores[setting] = ReferenceStore(
                generate_setting, self.reference_identity(setting), self.config.reference_cache_dir
            )
        return self._stores[setting]

    def _generate_references(
        self, conditions: Sequence[Condition], seeds: Sequence[int], steps: int
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        latents: list[torch.Tensor] = []
        with torch.inference_mode(), self.engine.uncached():
            images = self.sampler(conditions, seeds, steps, self.config.guidance_scale, latents)
        return latents, images
