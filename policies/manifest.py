"""The exported-policy file format: constants shared by writing and reading, and the error for bad files."""

from __future__ import annotations

FORMAT_VERSION = 1
SUPPORTED_VERSIONS = (1,)
MANIFEST_KEY = "cachepilot"
PROVENANCE_KEYS = ("engine_options", "model_family", "scheduler", "training_config_sha256", "created_with")
POLICY_KEYS = (
    "format_version",
    "feature_names",
    "normalization",
    "layers",
    "num_groups",
    "budget_conditioned",
    *PROVENANCE_KEYS,
)
SCHEDULE_KEYS = ("format_version", "kind", "num_steps", "num_groups", *PROVENANCE_KEYS)
NORMALIZATION_KEYS = ("enabled", "clip", "epsilon")
LAYER_KEYS = ("name", "in_features", "out_features", "activation")
MEAN, VAR, SCHEDULE = "normalization.mean", "normalization.var", "schedule"
_FLOAT_DTYPES = {"F16", "BF16", "F32", "F64"}
_INT_DTYPES = {"I8", "I16", "I32", "I64", "U8"}
_MAX_HEADER_BYTES = 100_000_000


class PolicyFormatError(ValueError):
    """An exported policy or schedule file is missing, unreadable or inconsistent; the message says what to fix."""
