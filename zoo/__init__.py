"""Small diffusion models trained on 16×16 digits, with their pipelines, classifier and metrics.

Shipped models (see :func:`list_models`): ``"mini-dit-digits"`` (class-conditional DiT, DDIM) and
``"mini-flow-digits"`` (SD3-style rectified flow). Load them with :func:`load_pipeline`.
"""

from zoo.classifier import features, predict
from zoo.metrics import class_accuracy, fd_digits, frechet_distance, psnr, ssim
from zoo.pipelines import MiniDiTPipeline, MiniFlowPipeline
from zoo.registry import list_models, load_pipeline

__all__ = [
    "MiniDiTPipeline",
    "MiniFlowPipeline",
    "class_accuracy",
    "fd_digits",
    "features",
    "frechet_distance",
    "list_models",
    "load_pipeline",
    "predict",
    "psnr",
    "ssim",
]
