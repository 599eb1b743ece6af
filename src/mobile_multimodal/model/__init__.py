"""The network and its Python API. Imports torch; knows nothing of serving or metrics."""

from mobile_multimodal.model.llm import MobileMultiModalLLM, bundled_model_dir
from mobile_multimodal.model.model_config import ModelConfig
from mobile_multimodal.model.model_errors import ModelLoadError
from mobile_multimodal.model.tokenizer import Tokenizer

__all__ = ["MobileMultiModalLLM", "ModelConfig", "ModelLoadError", "Tokenizer", "bundled_model_dir"]
