"""Data: TFDS reading, the labeled / unlabeled splits, the compact copy, ImageNet, CLIP labels."""
