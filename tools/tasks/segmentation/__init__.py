"""Semantic segmentation: the task object the training engine runs, its model options, loss, metrics and
inference (whole image, sliding window, multi-scale and flip)."""
