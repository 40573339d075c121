"""COCO-format JSON for detections and ground truth, and the pycocotools evaluation.

Every YOLO dataset gets the standard COCO numbers: when the dataset is COCO its official annotation
file is used (with the 80 -> 91 category ids); otherwise the YOLO labels are written out as a COCO
annotation file first.
"""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np

from utils.general import LOGGER

# COCO's 91 category ids for the 80 contiguous classes YOLO uses (a published mapping)
COCO80_TO_91 = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28, 31, 32,
                33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59,
                60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90]
STAT_NAMES = ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
              "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large")


def coco_image_id(path: str | Path) -> int:
    """COCO's own image id from an official file name ('000000000139.jpg' -> 139)."""
    stem = Path(path).stem
    if not stem.isdigit():
        raise ValueError(f"{path}: COCO image names are numeric ids; cannot match it to the official annotations")
    return int(stem)


def detections_to_json(predn: np.ndarray, img_id: int, class_map=None) -> list[dict]:
    """One image's detections (x1 y1 x2 y2 conf cls, original pixels) as COCO result records."""
    records = []
    for x1, y1, x2, y2, conf, cls in np.asarray(predn, dtype=np.float64).tolist():
        c = int(cls)
        records.append({"image_id": int(img_id), "category_id": class_map[c] if class_map else c,
                        "bbox": [round(x1, 3), round(y1, 3), round(x2 - x1, 3), round(y2 - y1, 3)],
                        "score": round(conf, 5)})
    return records


def ground_truth_json(ids: list[int], paths: list[str], shapes: list[tuple[int, int]], targets: list[np.ndarray],
                      names, class_map=None) -> dict:
    """COCO annotation dict from YOLO labels in original pixels (rows: cls x1 y1 x2 y2), one image per id.

    ``file_name`` is the path as the dataset lists it, so images with one name in different folders stay
    apart (the ids already are)."""
    images, annotations = [], []
    for img_id, path, (h, w), t in zip(ids, paths, shapes, targets):
        images.append({"id": int(img_id), "file_name": str(path), "height": int(h), "width": int(w)})
        for cls, x1, y1, x2, y2 in np.asarray(t, dtype=np.float64).reshape(-1, 5).tolist():
            bw, bh = x2 - x1, y2 - y1
            annotations.append({"id": len(annotations) + 1, "image_id": int(img_id),
                                "category_id": class_map[int(cls)] if class_map else int(cls),
                                "bbox": [x1, y1, bw, bh], "area": bw * bh, "iscrowd": 0})
    ids = class_map or list(range(len(names)))
    categories = [{"id": ids[i], "name": str(n)} for i, n in enumerate(names)]
    return {"images": images, "annotations": annotations, "categories": categories}


def require_pycocotools(option: str = "the COCO JSON evaluation") -> None:
    """A ``ValueError`` saying how to get pycocotools where it is missing (``option``: what asked for it, as the
    caller names it): only the COCO JSON evaluation uses it; validation's own mAP (utils/evaluation/metrics.py) does not."""
    try:
        import pycocotools.cocoeval  # noqa: F401
    except ImportError as e:
        raise ValueError(f"{option} evaluates with pycocotools, which cannot be imported here ({e}): "
                         f"pip install pycocotools, or validate without {option} (the mAP needs no pycocotools)") from None


def coco_evaluate(anno_json: str | Path, pred_json: str | Path, image_ids=None) -> dict[str, float]:
    """pycocotools bbox evaluation; returns the 12 summary statistics by name and logs the summary."""
    require_pycocotools()
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints loading chatter
        anno = COCO(str(anno_json))
    if not json.loads(Path(pred_json).read_text()):
        LOGGER.warning("pycocotools: no detections to evaluate")
        return {k: 0.0 for k in STAT_NAMES}
    with contextlib.redirect_stdout(io.StringIO()):
        pred = anno.loadRes(str(pred_json))
    evaluator = COCOeval(anno, pred, "bbox")
    if image_ids is not None:
        evaluator.params.imgIds = list(image_ids)
    summary = io.StringIO()
    with contextlib.redirect_stdout(summary):
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    LOGGER.info("pycocotools (COCO bbox metrics):\n" + summary.getvalue().rstrip())
    return dict(zip(STAT_NAMES, (float(x) for x in evaluator.stats)))


def find_coco_annotations(data: dict) -> Path | None:
    """The official annotation file when the dataset is COCO (val2017), else None."""
    root = Path(data.get("path", ""))
    val = str(data.get("val", ""))
    candidate = root / "annotations" / "instances_val2017.json"
    return candidate if "val2017" in val and candidate.is_file() else None
