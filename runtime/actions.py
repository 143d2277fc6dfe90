"""The three things the engine can do with a block group at a denoising step."""

from enum import IntEnum


class Action(IntEnum):
    """What a block group does for one sample at one denoising step.

    Attributes:
        COMPUTE: Run the group's blocks; refresh its cached residual.
        REUSE: Add the group's most recent residual (group output minus group input) to the current input.
        FORECAST: Add a Taylor extrapolation of the group's residual, fitted to its last computed steps in the
            diffusion time variable.
    """

    COMPUTE = 0
    REUSE = 1
    FORECAST = 2


NUM_ACTIONS = len(Action)
