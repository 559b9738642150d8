"""The platform's default detector executor: a small anchor-free, CenterNet-style detector in plain PyTorch.

It speaks the executor contract (YMIR protocol 1.1.0) and nothing else: it never imports the platform.
"""

__version__ = "0.1.0"
