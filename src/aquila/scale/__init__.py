"""EfficientScale: grow a trained dense model (Scale-Up) and turn it into a mixture of experts
(Scale-Out), as AquilaMoE does."""

from aquila.scale.grow import METHODS, check_target, grow
from aquila.scale.upcycle import upcycle

__all__ = ["METHODS", "check_target", "grow", "upcycle"]
