"""Task metrics: thin wrappers over torchmetrics, pycocotools and pycocoevalcap."""
