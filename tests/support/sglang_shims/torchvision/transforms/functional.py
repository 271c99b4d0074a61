"""Test-only stub of torchvision.transforms.functional (see ../../README.md)."""

from torchvision import _Unavailable
from torchvision.transforms import InterpolationMode  # noqa: F401  (re-exported like the real one)


def __getattr__(name: str) -> _Unavailable:
    if name.startswith("__"):
        raise AttributeError(name)
    return _Unavailable(f"transforms.functional.{name}")
