"""Inference: DICOM or PNG to the model's input tensor, DenseNet-169 with its class activation
map, model cards, and the batching engine."""
