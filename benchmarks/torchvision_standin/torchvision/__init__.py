"""A stand-in for torchvision in the benchmark-only YOLO environment: only what Ultralytics' detection path
uses (the real torchvision does not install beside the CPU torch wheel here)."""

from torchvision import ops

__version__ = "0.28.0"
__all__ = ["ops"]
