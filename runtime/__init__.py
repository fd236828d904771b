"""On-device half of sleepnas: recordings, windows, ONNX sessions and scoring.

This package imports numpy, onnxruntime and mne only (matplotlib lazily for
plots). It never imports torch, so it runs on a device with the base install.
"""
