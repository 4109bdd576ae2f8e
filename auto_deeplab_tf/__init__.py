"""Auto-DeepLab in TensorFlow 2 / Keras 3: search space, supernet, decoding, fixed network."""

__version__ = "0.1.0"
