"""The classifiers (:mod:`dlpl_jax.models.networks`) and their variables files
(:mod:`dlpl_jax.models.weights`)."""

from dlpl_jax.models.networks import CIFAR10_MEAN
from dlpl_jax.models.networks import CIFAR10_STD
from dlpl_jax.models.networks import create_model
from dlpl_jax.models.networks import IMAGENET_MEAN
from dlpl_jax.models.networks import IMAGENET_STD
from dlpl_jax.models.networks import MODEL_NAMES
from dlpl_jax.models.networks import normalize
from dlpl_jax.models.networks import param_count
from dlpl_jax.models.networks import ResNet50
from dlpl_jax.models.networks import SmallCNN
from dlpl_jax.models.networks import WideResNet

__all__ = ["CIFAR10_MEAN", "CIFAR10_STD", "create_model", "IMAGENET_MEAN", "IMAGENET_STD",
           "MODEL_NAMES", "normalize", "param_count", "ResNet50", "SmallCNN", "WideResNet"]
