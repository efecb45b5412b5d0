"""Networks and their weights: blocks, the ResNet registry, checkpoints, the Hub, akamaster, export and the proof
of equality with timm."""
