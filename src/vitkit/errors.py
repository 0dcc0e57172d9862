"""The base class of vitkit's own errors.

Every error vitkit raises about its input (a weight file, a data folder, an image, an option) is a VitkitError
whose message says what was expected, what was found and what to do. It subclasses ValueError, so code that
catches ValueError keeps working.

    VitkitError
      CheckpointError   vitkit.weights: a weight file that cannot be read, or does not fit its model
      DataError         vitkit.data: a data set or image file that cannot be read as asked
      ImageSizeError    vitkit.layers.checks: an image whose size, channels or dtype a model cannot take
      ConfigError       vitkit.layers.config_checks: a model option no model can be built with
      OnnxError         vitkit.export: an ONNX file or export that cannot be used as asked
"""
from __future__ import annotations


class VitkitError(ValueError):
    """An input vitkit cannot use, with a message written for the person who supplied it."""


__all__ = ["VitkitError"]
