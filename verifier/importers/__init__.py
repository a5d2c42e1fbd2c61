from verifier.importers.onnx_importer import load_onnx

__all__ = ["load_onnx"]
