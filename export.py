"""Export a checkpoint to deployment formats, folded first, each export verified before it is reported.

    python export.py --weights runs/train/exp/weights/best.pt --include onnx openvino --imgsz 640
    python export.py --weights best.pt --include onnx --dynamic --simplify
    python export.py --weights best.pt --include onnx --nms --conf-thres 0.25 --iou-thres 0.45
    python export.py --weights best.pt --include onnx --nms --topk-per-class 50 --topk-all 100 [--agnostic-nms]
    python export.py --weights best.pt --include engine --device 0 --half --workspace 4
    python export.py --weights best.pt --include onnx openvino --int8 --data data.yaml [--calib-images 300]
    python export.py --weights best.pt --include tflite executorch [--int8 --data data.yaml]

Formats (files land beside the weights):

| --include   | file                          | runs with                                  |
|-------------|-------------------------------|--------------------------------------------|
| fused       | <stem>-fused.pt               | PyTorch (torch.load weights_only=True)     |
| torchscript | <stem>.torchscript            | torch.jit.load                             |
| onnx        | <stem>.onnx                   | ONNX Runtime, OpenCV DNN (--opset 12)      |
| openvino    | <stem>_openvino_model/        | OpenVINO                                   |
| engine      | <stem>.engine                 | TensorRT (CUDA and tensorrt required)      |
| tflite      | <stem>_float32.tflite and     | LiteRT interpreter (ai-edge-litert)        |
|             | <stem>_float16.tflite         |                                            |
| executorch  | <stem>.pte (XNNPACK)          | ExecuTorch runtime                         |

tflite and executorch need the optional packages of requirements-mobile.txt (``utils.deploy.mobile_exporters``).

Every format is exported from the folded model (``load_model(..., fuse=True)``), so no graph has
training branches (``utils.deploy.export_pipeline``). Each file is then run through ``utils.deploy.backends.load_backend``
on bus.jpg letterboxed to --imgsz and compared with the folded PyTorch model (``utils.deploy.verify``): the error,
boxes relative to the image size and probabilities as they are, must stay below ``utils.deploy.verify.TOLERANCE``
(5e-4 for fp32, 1e-2 for fp16). With --nms the graph ends in ONNX NonMaxSuppression and the check is against
``utils.ops.non_max_suppression``. A summary table follows; the exit status is 1 if any requested
format failed (the others are still exported). ``run(**kwargs)`` is importable and returns the results.
Files are written into a hidden staging folder and get their name only once verified: a failed one is kept
as ``<name>.failed<suffix>`` (``best.failed.onnx``) and the previous verified file stays in place.

``--int8`` also writes a calibrated INT8 model for each of onnx (``<stem>-int8.onnx``, ONNX Runtime QDQ),
openvino (``<stem>_int8_openvino_model/``, NNCF), engine (``<stem>-int8.engine``, TensorRT from the QDQ
ONNX), tflite (``<stem>_int8.tflite``, ai-edge-quantizer) and executorch (``<stem>-int8.pte``, PT2E), calibrated on ``--calib-images`` images of ``--data`` (see ``utils.deploy.quantize``). INT8 cannot equal
fp32 tensor by tensor, so it is verified by its detections on the data's val images: the share of the
fp32 model's detections it reproduces and their mean IoU, printed, with a failure below the stated levels.
"""
from __future__ import annotations

import argparse

from utils.datasets.dataset_config import load_names  # one parser for names, shared with check_dataset
from utils.deploy.export_pipeline import ExportResult, export_checkpoint
from utils.deploy.exporters import EXPORTERS, INT8_EXPORTERS
from utils.general import LOGGER, OPTION_RULES, check_against, check_options, setup_logging
from utils.torch_utils import select_device

FORMATS = tuple(EXPORTERS)  # export order matters: engine reuses the ONNX file exported before it


def log_summary(results: list[ExportResult]) -> None:
    LOGGER.info(f"\n{'Format':<14}{'File':<48}{'Size MB':>9}{'Time s':>8}  {'Max abs diff':>12}  Status")
    for r in results:
        diff = f"{r.max_abs_diff:.3g}" if r.max_abs_diff is not None else "-"
        if r.agreement is not None:
            diff = f"{r.agreement.share:.1%} matched, IoU {r.agreement.mean_iou:.3f}"
        status = "ok" if r.ok else f"FAILED: {r.error}"
        LOGGER.info(f"{r.format:<14}{str(r.file or '-'):<48}{r.size_mb:>9.1f}{r.seconds:>8.1f}  {diff:>12}  {status}")


def check_nms_options(nms: bool, max_det: int, topk_per_class, topk_all, agnostic_nms: bool) -> int:
    """The --nms graph's detections per image (``--topk-all``, else ``--max-det``), after checking the NMS options:
    each needs --nms, the limits are >= 1, and --topk-per-class has no classes to count with --agnostic-nms."""
    given = [f for f, v in (("--topk-per-class", topk_per_class), ("--topk-all", topk_all),
                            ("--agnostic-nms", agnostic_nms)) if v not in (None, False)]
    if given and not nms:
        raise ValueError(f"{', '.join(given)} configure the NMS inside the graph: add --nms (or leave them out)")
    for flag, v in (("topk_per_class", topk_per_class), ("topk_all", topk_all)):
        if v is not None:
            check_against({flag: OPTION_RULES["max_det"]}, {flag: v})
    if agnostic_nms and topk_per_class is not None:
        raise ValueError("--topk-per-class does not apply with --agnostic-nms (one NMS over all classes): "
                         "--topk-all limits it")
    if topk_all is not None and max_det not in (300, topk_all):
        raise ValueError(f"--topk-all {topk_all} and --max-det {max_det} both set the detections per image: give one")
    return topk_all if topk_all is not None else max_det


def run(weights, include=("torchscript", "onnx"), imgsz=(640, 640), batch_size=1, device="cpu",
        half=False, dynamic=False, simplify=False, opset=17, workspace=4.0, nms=False, conf_thres=0.25,
        iou_thres=0.45, max_det=300, verbose=False, data=None, int8=False, calib_images=300, topk_per_class=None,
        topk_all=None, agnostic_nms=False) -> list[ExportResult]:
    """Export ``weights`` to every format in ``include``; returns one ``ExportResult`` per format, in order.

    A format that fails is logged and reported in its result (``.ok`` False); the others still export.
    """
    setup_logging()
    include = [x.lower() for x in ([include] if isinstance(include, str) else include)]
    unknown = sorted(set(include) - set(FORMATS))
    if unknown or not include:
        raise ValueError(f"--include {unknown or include}: choose from {', '.join(FORMATS)}")
    check_options(batch_size=batch_size, max_det=max_det, opset=opset, conf_thres=conf_thres, iou_thres=iou_thres)
    int8_formats = [f for f in include if f in INT8_EXPORTERS]
    if int8 and not int8_formats:
        raise ValueError(f"--int8 applies to {', '.join(INT8_EXPORTERS)}: include one of them")
    if int8 and nms:
        raise ValueError("--int8 with --nms is not supported: export INT8 without --nms and run NMS on its output")
    max_det = check_nms_options(nms, max_det, topk_per_class, topk_all, agnostic_nms)
    device = select_device(str(device))
    names = load_names(data) if data else None
    if int8:  # before the model loads
        from utils.deploy.quantize import check_int8_args

        check_int8_args(data, calib_images, opset, int8_formats)
    results = export_checkpoint(weights, include, imgsz, batch_size, device, names, int8=int8, data=data,
                                calib_images=calib_images, half=half, dynamic=dynamic, simplify=simplify, opset=opset,
                                workspace=workspace, nms=nms, conf_thres=conf_thres, iou_thres=iou_thres,
                                max_det=max_det, topk_per_class=topk_per_class, agnostic_nms=agnostic_nms,
                                verbose=verbose)
    log_summary(results)
    return results


def parse_opt(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weights", type=str, required=True, help="checkpoint of this project (.pt)")
    parser.add_argument("--include", nargs="+", default=["torchscript", "onnx"], choices=FORMATS, help="formats")
    parser.add_argument("--imgsz", "--img", "--img-size", nargs="+", type=int, default=[640], help="image size: h [w]")
    parser.add_argument("--batch-size", type=int, default=1, help="batch size (the largest with --dynamic engine)")
    parser.add_argument("--device", default="cpu", help="cpu or a CUDA id such as 0")
    parser.add_argument("--half", action="store_true", help="FP16 weights and inputs (CPU fp16 tracing needs a torch build with CPU half kernels)")
    parser.add_argument("--dynamic", action="store_true", help="ONNX/OpenVINO/TensorRT: dynamic batch and image size "
                        "(tflite and executorch files have a fixed shape)")
    parser.add_argument("--simplify", action="store_true", help="ONNX: slim the graph with onnxslim")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset version (12 for OpenCV DNN)")
    parser.add_argument("--workspace", type=float, default=4, help="TensorRT builder workspace (GB)")
    parser.add_argument("--nms", action="store_true", help="onnx/openvino/engine: end-to-end graph with NMS")
    parser.add_argument("--conf-thres", type=float, default=0.25, help="--nms confidence threshold")
    parser.add_argument("--iou-thres", type=float, default=0.45, help="--nms IoU threshold")
    parser.add_argument("--max-det", type=int, default=300, help="--nms detections per image")
    parser.add_argument("--topk-per-class", type=int, default=None, help="--nms: boxes kept per class (default "
                        "--max-det; YOLOv5's TF NMS uses 100)")
    parser.add_argument("--topk-all", type=int, default=None, help="--nms: boxes kept per image (same as --max-det)")
    parser.add_argument("--agnostic-nms", action="store_true", help="--nms: class-agnostic NMS (overlapping boxes "
                        "of different classes suppress each other)")
    parser.add_argument("--verbose", action="store_true", help="verbose exporter logs, tracebacks on failure")
    parser.add_argument("--data", type=str, default=None, help="dataset YAML whose class names to embed (and, with "
                        "--int8, whose images calibrate and verify)")
    parser.add_argument("--int8", action="store_true", help="also write calibrated INT8 onnx/openvino/engine/"
                        "tflite/executorch models")
    parser.add_argument("--calib-images", type=int, default=300, help="--int8: calibration images from --data")
    return parser.parse_args(argv)


def main(opt: argparse.Namespace) -> int:
    results = run(**vars(opt))
    failed = [r.format for r in results if not r.ok]
    if failed:
        LOGGER.error(f"Export failed for: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    from utils.checkpoint import CheckpointError
    from utils.signals import exit_code, handle_termination

    handle_termination()  # SIGTERM unwinds like Ctrl-C: temporaries are removed
    try:
        raise SystemExit(main(parse_opt()))
    except KeyboardInterrupt as e:  # once exports started, run() logged what is saved
        raise SystemExit(exit_code(e)) from None
    except (CheckpointError, FileNotFoundError, ValueError, RuntimeError) as e:  # before any format: a sentence
        setup_logging()
        LOGGER.error(f"ERROR: {e}")
        raise SystemExit(1) from None
