"""pochitrain: train an image classifier, export to ONNX, deploy with TensorRT."""

__version__ = "0.1.0"
