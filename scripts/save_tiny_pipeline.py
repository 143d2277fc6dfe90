"""Saves a tiny random text-to-image or video pipeline (tiny text encoders and tokenizers included) to a folder.

The folder loads offline with ``DiffusionPipeline.from_pretrained``, e.g. to try a CLI's ``--model`` by hand; the
pipelines are those of the tests, see ``tests/tiny_pipelines.py`` (Wan's needs ``accelerate`` to load).

    PYTHONPATH=. python scripts/save_tiny_pipeline.py pixart-sigma /tmp/tiny-pixart-sigma [--num-layers 4]
"""

from __future__ import annotations

import argparse

from tests.tiny_pipelines import TEXT_FAMILIES, save_text_pipeline, text_call_kwargs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("family", choices=TEXT_FAMILIES)
    parser.add_argument("folder")
    parser.add_argument("--num-layers", type=int, default=None, help="transformer blocks (Flux: double-stream ones)")
    args = parser.parse_args()
    sizes = {} if args.num_layers is None else {"num_layers": args.num_layers}
    folder = save_text_pipeline(args.family, args.folder, **sizes)
    print(f"Saved {args.family} to {folder}; call it with {text_call_kwargs(args.family)}")


if __name__ == "__main__":
    main()
