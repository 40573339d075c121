"""Deployment: exporters, INT8 quantizers, verification of exported files, inference backends (ours and files written by YOLOv5/YOLOv7), inference results."""
