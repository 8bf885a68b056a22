"""Dense prediction on torchvision: Mask R-CNN (``regla det``) and Semantic FPN (``regla seg``) with any
``features_only`` backbone, COCO AP and mIoU, predict-to-PNG (docs/dense.md)."""
