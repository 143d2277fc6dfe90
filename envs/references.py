"""Uncached reference trajectories, computed once per (model, scheduler, steps, condition, seed) and kept."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .conditions import Condition, condition_key


@dataclass
class Reference:
    """The uncached generation of one condition (class label or prompt) and seed.

    Attributes:
        latents: ``(steps, ...)`` the pipeline's latents after each denoising step.
        image: The final image, in [0, 1].
    """

    latents: torch.Tensor
    image: torch.Tensor


Generate = Callable[[Sequence[Condition], Sequence[int]], tuple[list[torch.Tensor], torch.Tensor]]


class ReferenceStore:
    """Keeps reference trajectories in memory and, optionally, on disk.

    Args:
        generate: Runs the uncached pipeline for ``(conditions, seeds)``; returns the per-step latents (each
            ``(samples, ...)``) and the images ``(samples, C, H, W)``.
        identity: Everything that changes a trajectory besides condition and seed (model config and weights,
            scheduler config, steps, guidance); hashed into the disk folder name.
        cache_dir: Folder for the on-disk copy, or ``None`` for memory only.
    """

    def __init__(self, generate: Generate, identity: dict[str, Any], cache_dir: str | Path | None = None) -> None:
        self._generate = generate
        digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]
        self.folder = Path(cache_dir) / digest if cache_dir is not None else None
        self._memory: dict[tuple[str, int], Reference] = {}
        self.generated = 0

    def get(self, conditions: Sequence[Condition], seeds: Sequence[int]) -> list[Reference]:
        """References for each ``(condition, seed)``; the missing ones are generated together in one batch.

        A condition is identified by :func:`envs.conditions.condition_key` (a prompt by its text's hash).
        """
        keys = [(condition_key(c), int(s)) for c, s in zip(conditions, seeds, strict=True)]
        given = dict(zip(keys, conditions, strict=True))
        missing = [k for k in dict.fromkeys(keys) if k not in self._memory and not self._load(k)]
        if missing:
            self._keep(missing, *self._generate([given[k] for k in missing], [s for _, s in missing]))
        return [self._memory[k] for k in keys]

    def get_parts(
        self,
        parts: Sequence[tuple[Sequence[Condition], Sequence[int]]],
        generate_many: Callable[
            [list[tuple[list[Condition], list[int]]]], list[tuple[list[torch.Tensor], torch.Tensor]]
        ]
        | None = None,
    ) -> list[list[Reference]]:
        """References for several sub-batches ``(conditions, seeds)``, one list per sub-batch.

        Each sub-batch's missing references (those not kept yet, nor missing from an earlier sub-batch) are generated
        together, one generation per sub-batch: with one part this is :meth:`get`. The generations are the same
        whether they run one after another here or all at once elsewhere.

        Args:
            parts: The sub-batches, in order.
            generate_many: Runs several generations (each ``(conditions, seeds)``) and returns their
                ``(latents, images)`` in order; ``None``: one after another with this store's ``generate``.
        """
        wanted: list[list[tuple[str, int]]] = []
        given: dict[tuple[str, int], Condition] = {}
        missing: list[list[tuple[str, int]]] = []
        seen: set[tuple[str, int]] = set()
        for conditions, seeds in parts:
            keys = [(condition_key(c), int(s)) for c, s in zip(conditions, seeds, strict=True)]
            given.update(zip(keys, conditions, strict=True))
            wanted.append(keys)
            fresh = [k for k in dict.fromkeys(keys) if k not in seen and k not in self._memory and not self._load(k)]
            seen.update(fresh)
            missing.append(fresh)
        batches = [([given[k] for k in keys], [s for _, s in keys]) for keys in missing if keys]
        if generate_many is None:
            generated = [self._generate(conditions, seeds) for conditions, seeds in batches]
        else:
            generated = generate_many(batches) if batches else []
        for keys, (latents, images) in zip([keys for keys in missing if keys], generated, strict=True):
            self._keep(keys, latents, images)
        return [[self._memory[k] for k in keys] for keys in wanted]

    def _keep(self, keys: list[tuple[str, int]], latents: list[torch.Tensor], images: torch.Tensor) -> None:
        stacked = torch.stack(latents, dim=1)
        for index, key in enumerate(keys):
            reference = Reference(stacked[index].clone(), images[index].clone())
            self._memory[key] = reference
            self._save(key, reference)
        self.generated += len(keys)

    def _path(self, key: tuple[str, int]) -> Path:
        return self.folder / f"{key[0]}_seed{key[1]}.safetensors"

    def _load(self, key: tuple[str, int]) -> bool:
        if self.folder is None or not self._path(key).is_file():
            return False
        tensors = load_file(str(self._path(key)))
        self._memory[key] = Reference(tensors["latents"], tensors["image"])
        return True

    def _save(self, key: tuple[str, int], reference: Reference) -> None:
        if self.folder is None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        temporary = self._path(key).with_suffix(".tmp")
        save_file({"latents": reference.latents.contiguous(), "image": reference.image.contiguous()}, str(temporary))
        temporary.replace(self._path(key))
