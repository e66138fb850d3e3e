"""Export of hubedit models to deployment formats (ONNX)."""

from .onnx import (
    DroppedFeatureInUseError,
    OnnxExport,
    OnnxExportError,
    OnnxVerificationError,
    count_zero_weights,
    export_onnx,
    load_onnx_metadata,
)

__all__ = [
    "export_onnx",
    "load_onnx_metadata",
    "count_zero_weights",
    "OnnxExport",
    "OnnxExportError",
    "OnnxVerificationError",
    "DroppedFeatureInUseError",
]
