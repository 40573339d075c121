"""Evaluation: the validation loop, COCO-exact metrics, pycocotools, metric plots."""
