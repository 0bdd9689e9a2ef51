"""The exported graph run in ONNX Runtime: what the one-path tests compare the model's forward against."""
from fastmsfd.export import onnx_bytes
from fastmsfd.model import ModelOutput
from fastmsfd.runtimes import OnnxRuntimeRunner


def run_exported(det, images_u8) -> ModelOutput:
    """The detector's model exported to ONNX and run in ONNX Runtime on uint8 images at its input size."""
    return ModelOutput(*OnnxRuntimeRunner(onnx_bytes(det))(images_u8))
