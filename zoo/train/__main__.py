"""Command line for reproducing the zoo's weights.

Usage::

    python -m zoo.train classifier [--out DIR]
    python -m zoo.train mini-dit-digits [--out DIR] [--minutes M | --steps N]
    python -m zoo.train mini-flow-digits [--out DIR] [--minutes M | --steps N]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from zoo.registry import ASSETS_DIR

TARGETS = ("classifier", "mini-dit-digits", "mini-flow-digits")


def main(argv: list[str] | None = None) -> None:
    """Parses arguments and runs one trainer."""
    parser = argparse.ArgumentParser(prog="python -m zoo.train", description="Train a zoo model from scratch.")
    parser.add_argument("target", choices=TARGETS)
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: the shipped assets folder)")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=int, default=None, help="optimiser steps")
    budget.add_argument("--minutes", type=float, default=None, help="wall-clock budget (steps cap still applies)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    if args.target == "classifier":
        from zoo.train.classifier import ClassifierArgs, train_classifier

        cargs = ClassifierArgs(seed=args.seed)
        if args.out is not None:
            cargs.out = args.out
        if args.steps is not None:
            cargs.steps = args.steps
        train_classifier(cargs)
        return

    from zoo.train.common import TrainArgs

    out = args.out or ASSETS_DIR / args.target
    if args.target == "mini-dit-digits":
        from zoo.train.dit import DEFAULT_ARGS
        from zoo.train.dit import train_dit as train
    else:
        from zoo.train.flow import DEFAULT_ARGS
        from zoo.train.flow import train_flow as train
    targs = TrainArgs(**{**DEFAULT_ARGS, "out": out, "seed": args.seed})
    if args.steps is not None:
        targs.steps = args.steps
    targs.minutes = args.minutes
    train(targs)


if __name__ == "__main__":
    main()
