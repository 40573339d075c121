"""Data in: dataset configs, label scans, loaders, augmentations, inference sources, the embedded synthetic default."""
