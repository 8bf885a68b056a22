"""SAM on fast image encoders (RepViT §4.2, MobileSAM) over Meta's segment-anything package."""
