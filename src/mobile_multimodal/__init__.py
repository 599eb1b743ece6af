"""mobile-multimodal-llm: a small vision-language model you can train, quantize, export and serve."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mobile-multimodal-llm")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0"

SERVICE_NAME = "mobile-multimodal-llm"

__all__ = ["SERVICE_NAME", "__version__"]
