"""What a sample is generated for: a class label or a prompt, and prompts encoded once for every generation.

A condition is an ``int`` (a class label, for the zoo's pipelines and ``DiTPipeline``) or a ``str`` (a prompt, for
text-to-image and text-to-video pipelines). :class:`PromptEncoder` encodes each prompt once with the pipeline's own
``encode_prompt`` and keeps the embeddings in memory and, optionally, on disk (keyed by the text encoders' weights,
the pipeline family, the prompt and the sequence length), or takes them from a file of precomputed embeddings, so
that generations pass ``prompt_embeds`` and the text encoders do not run again.

Prompts come from a text file (one per line, blank lines skipped), a YAML file holding a list, or a list. One list
for every split is split deterministically (:func:`split_prompts`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file, save_file

from .config import ConfigError
from .families import PipelineFamily

Condition = int | str
"""A class label (``int``) or a prompt (``str``)."""

PROMPT_SPLITS = ("train", "eval", "test")
"""Training prompts, validation prompts (checkpoint choice) and test prompts (the benchmark)."""

TEXT_ENCODERS = ("text_encoder", "text_encoder_2", "text_encoder_3")


def condition_key(condition: Condition) -> str:
    """A stable, file-name-safe identity: ``condition7`` for class 7, ``prompt-<sha256 prefix>`` for a prompt."""
    if isinstance(condition, str):
        return "prompt-" + hashlib.sha256(condition.encode()).hexdigest()[:20]
    return f"condition{int(condition)}"


def condition_label(condition: Condition, width: int = 24) -> str:
    """A short caption: the class number, or the prompt cut to ``width`` characters."""
    if isinstance(condition, str):
        return condition if len(condition) <= width else condition[: width - 1] + "…"
    return str(condition)


def read_prompts(source: str | Sequence[str], name: str = "env.prompts") -> list[str]:
    """Reads prompts from a ``.txt`` file (one per line), a ``.yaml`` / ``.yml`` list, or a list of strings.

    Duplicates are dropped (first occurrence kept).

    Raises:
        ConfigError: Naming ``name``, for a missing file, a YAML file without a list, or no prompt at all.
    """
    if isinstance(source, str):
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"{name}: prompt file {source} does not exist (give a .txt file, one prompt a line).")
        if path.suffix.lower() in (".yaml", ".yml"):
            data = yaml.safe_load(path.read_text())
            if not isinstance(data, list):
                raise ConfigError(f"{name}: {source} must hold a YAML list of prompts.")
            items = data
        else:
            items = path.read_text().splitlines()
    else:
        items = list(source)
    if not all(isinstance(item, str) for item in items):
        raise ConfigError(f"{name}: every prompt must be a string.")
    prompts = list(dict.fromkeys(item.strip() for item in items if item.strip()))
    if not prompts:
        raise ConfigError(f"{name}: no prompts in {source if isinstance(source, str) else 'the list'}.")
    return prompts


def split_prompts(prompts: Sequence[str], name: str = "env.prompts") -> dict[str, list[str]]:
    """Splits one prompt list into train / eval / test, independently of the list's order.

    The prompts are sorted by the SHA-256 of their text; the first 10% (at least one) are the test split, the next
    10% (at least one) the validation split, the rest the training split, each kept in the list's order.

    Raises:
        ConfigError: For fewer than three prompts.
    """
    if len(prompts) < 3:
        raise ConfigError(
            f"{name}: {len(prompts)} prompt(s) cannot be split into train, eval and test; give at least three, "
            f"or give the splits yourself ({name}: {{train: ..., eval: ..., test: ...}})."
        )
    held_out = max(1, round(0.1 * len(prompts)))
    ranked = sorted(prompts, key=lambda text: hashlib.sha256(text.encode()).hexdigest())
    test, validation = set(ranked[:held_out]), set(ranked[held_out : 2 * held_out])
    return {
        "train": [p for p in prompts if p not in test and p not in validation],
        "eval": [p for p in prompts if p in validation],
        "test": [p for p in prompts if p in test],
    }


def resolve_prompt_splits(value: Any, name: str = "env.prompts") -> dict[str, list[str]] | None:
    """The train / eval / test prompt lists a config value gives (``None`` stays ``None``).

    Accepts a file or list (split by :func:`split_prompts`) or a mapping of ``train``, ``eval`` and optionally
    ``test``, each a file or a list.

    Raises:
        ConfigError: For unknown split names, a missing train or eval split, or held-out prompts that are also
            training prompts.
    """
    if value is None:
        return None
    if not isinstance(value, dict):
        return split_prompts(read_prompts(value, name), name)
    unknown = sorted(set(value) - set(PROMPT_SPLITS))
    if unknown:
        raise ConfigError(f"{name}: unknown split(s) {unknown}; use {list(PROMPT_SPLITS)}.")
    for required in ("train", "eval"):
        if value.get(required) is None:
            raise ConfigError(f"{name}.{required}: give a prompt file or list (or one list for all splits).")
    splits = {split: read_prompts(value[split], f"{name}.{split}") for split in PROMPT_SPLITS if value.get(split)}
    splits.setdefault("test", list(splits["eval"]))
    for split in ("eval", "test"):
        shared = sorted(set(splits[split]) & set(splits["train"]))
        if shared:
            raise ConfigError(
                f"{name}.{split} shares {len(shared)} prompt(s) with {name}.train (e.g. {shared[0]!r}): held-out "
                "prompts must never be trained on."
            )
    return splits


def _fingerprint(pipe: Any) -> dict[str, str]:
    from .pipelines import weights_fingerprint

    return {
        name: weights_fingerprint(module)
        for name in TEXT_ENCODERS
        if isinstance(module := getattr(pipe, name, None), torch.nn.Module)
    }


class PromptEncoder:
    """Prompt embeddings of one pipeline, each prompt encoded once.

    Args:
        pipe: The pipeline; its ``encode_prompt`` (through ``family.encode``) encodes.
        family: The pipeline's family.
        max_sequence_length: Token length the prompts are padded or cut to.
        cache_dir: Folder to keep embeddings on disk across runs, or ``None``.
        embeddings: A ``.safetensors`` file of precomputed embeddings, one tensor per prompt and ``__call__``
            argument named ``"<prompt>/<argument>"`` (one row, no batch dimension), e.g. ``"a cat/prompt_embeds"``;
            prompts found there are not encoded.
    """

    def __init__(
        self,
        pipe: Any,
        family: PipelineFamily,
        max_sequence_length: int,
        cache_dir: str | Path | None = None,
        embeddings: str | Path | None = None,
    ) -> None:
        self.pipe, self.family, self.max_sequence_length = pipe, family, int(max_sequence_length)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._memory: dict[str, dict[str, torch.Tensor]] = {}
        self._fingerprint: dict[str, str] | None = None
        self.encoded = 0
        if embeddings is not None:
            if not Path(embeddings).is_file():
                raise FileNotFoundError(f"embeddings file {embeddings} does not exist.")
            for key, tensor in load_file(str(embeddings)).items():
                prompt, slash, argument = key.rpartition("/")  # "" is the empty (negative) prompt
                if not slash or not argument:
                    raise ValueError(f"{embeddings}: tensor {key!r} is not named '<prompt>/<argument>'.")
                self._memory.setdefault(prompt, {})[argument] = tensor.unsqueeze(0)

    def get(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """The batched ``__call__`` arguments (one row per prompt, on CPU); missing prompts are encoded together."""
        missing = [p for p in dict.fromkeys(prompts) if p not in self._memory and not self._load(p)]
        if missing:
            if self.family.encode is None:
                raise ValueError(f"family {self.family.name!r} has no prompt encoder.")
            with torch.inference_mode():
                encoded = self.family.encode(self.pipe, list(missing), self.max_sequence_length)
            for index, prompt in enumerate(missing):
                tensors = {
                    name: value[index : index + 1].detach().to("cpu").clone() for name, value in encoded.items()
                }
                self._memory[prompt] = tensors
                self._save(prompt, tensors)
            self.encoded += len(missing)
        rows = [self._memory[p] for p in prompts]
        return {name: torch.cat([row[name] for row in rows]) for name in rows[0]}

    def _path(self, prompt: str) -> Path:
        if self._fingerprint is None:
            self._fingerprint = _fingerprint(self.pipe)
        identity = {
            "text_encoders": self._fingerprint,
            "family": self.family.name,
            "pipeline": type(self.pipe).__name__,
            "max_sequence_length": self.max_sequence_length,
            "prompt": prompt,
        }
        digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]
        return self.cache_dir / f"{digest}.safetensors"

    def _load(self, prompt: str) -> bool:
        if self.cache_dir is None or not self._path(prompt).is_file():
            return False
        self._memory[prompt] = load_file(str(self._path(prompt)))
        return True

    def _save(self, prompt: str, tensors: dict[str, torch.Tensor]) -> None:
        if self.cache_dir is None:
            return
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        path = self._path(prompt)
        temporary = path.with_suffix(".tmp")
        save_file({name: value.contiguous() for name, value in tensors.items()}, str(temporary))
        temporary.replace(path)
