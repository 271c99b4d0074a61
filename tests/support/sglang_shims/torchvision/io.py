"""Test-only stub of torchvision.io (see ../README.md)."""

from torchvision import _Unavailable


def __getattr__(name: str) -> _Unavailable:
    if name.startswith("__"):
        raise AttributeError(name)
    return _Unavailable(f"io.{name}")
