"""Callbacks: user code the training loop calls at named points, without editing the loop.

The hook names are YOLOv5's (v7.0 ``utils/callbacks.py``), and each hook gets YOLOv5's arguments unless
``HOOKS`` says otherwise, so a YOLOv5 callback usually plugs in unchanged::

    from utils.callbacks import Callbacks
    import train

    callbacks = Callbacks()
    callbacks.register_action("on_fit_epoch_end", callback=lambda vals, epoch, best_fitness, fi: print(epoch, fi))
    train.run(data="coco128.yaml", epochs=3, callbacks=callbacks)
    train.run(data="coco128.yaml", epochs=3, callbacks={"on_train_end": my_function})  # a dict works too

Order over a run: ``on_pretrain_routine_start``, ``on_pretrain_routine_end``, ``on_train_start``, then per epoch
``on_train_epoch_start``, per batch ``on_train_batch_start``/``on_train_batch_end``, ``on_train_epoch_end``, the
validation hooks, ``on_fit_epoch_end``, ``on_model_save``; after the last epoch the final validation of best.pt,
``on_train_end``, and ``teardown`` (also after an interrupted or failed run). Under DDP user callbacks run in
every process (check ``RANK`` to act once); the built-in loggers are registered on rank 0 only. A callback's
exception stops training, as any error in the loop would.
"""
from __future__ import annotations

from typing import Callable

# hook -> the arguments it is called with (YOLOv5's, except where noted)
HOOKS = {
    "on_pretrain_routine_start": "()",
    "on_pretrain_routine_end": "(labels, names): every training box (n, 5) [cls, xywh] and the class names",
    "on_train_start": "()",
    "on_train_epoch_start": "()",
    "on_train_batch_start": "()",
    "on_train_batch_end": "(model, ni, imgs, targets, paths, vals): vals are the epoch's mean box/obj/cls losses",
    "on_train_epoch_end": "(epoch=epoch)",
    "on_val_start": "()",
    "on_val_batch_start": "()",
    "on_val_batch_end": "(batch_i, im, targets, paths, shapes, preds)",
    "on_val_end": "(results): the metrics dict of utils.evaluation.metrics.evaluate_detections (YOLOv5 passes its "
                  "pieces: nt, tp, fp, p, r, f1, ap, ap50, ap_class, confusion_matrix). Also fired alone by the "
                  "end-of-training check of best.pt when it rescores the last epoch's pass (same weights)",
    "on_fit_epoch_end": "(log_vals, epoch, best_fitness, fi): log_vals in utils.loggers.RESULT_KEYS order",
    "on_model_save": "(last, epoch, final_epoch, best_fitness, fi)",
    "on_train_end": "(last, best, epoch, results)",
    "teardown": "(): always last, also after Ctrl-C or an error (loggers close their files and runs here)",
}


class Callbacks:
    """Actions registered per hook, run in registration order by ``run(hook, *args)``."""

    def __init__(self):
        self._callbacks: dict[str, list[dict]] = {hook: [] for hook in HOOKS}

    @staticmethod
    def _check(hook: str) -> None:
        if hook not in HOOKS:
            raise ValueError(f"unknown callback hook {hook!r}; the hooks are {', '.join(HOOKS)}")

    def register_action(self, hook: str, name: str = "", callback: Callable | None = None) -> None:
        """Call ``callback`` at ``hook`` (after the actions already registered there); ``name`` labels it."""
        self._check(hook)
        if not callable(callback):
            raise TypeError(f"callback for {hook!r} must be callable, got {type(callback).__name__}")
        self._callbacks[hook].append({"name": name, "callback": callback})

    def get_registered_actions(self, hook: str | None = None):
        """The actions of ``hook`` (a list of {'name', 'callback'}), or of every hook (a dict)."""
        if hook is None:
            return self._callbacks
        self._check(hook)
        return self._callbacks[hook]

    def run(self, hook: str, *args, **kwargs) -> None:
        """Call every action registered at ``hook`` with these arguments."""
        self._check(hook)
        for action in self._callbacks[hook]:
            action["callback"](*args, **kwargs)


def as_callbacks(spec) -> Callbacks:
    """A fresh ``Callbacks`` holding the actions of ``spec``: None, a ``Callbacks`` or a dict of hook -> callable
    (or list of callables). The caller's object is not changed, so the trainer's own loggers never leak into it."""
    out = Callbacks()
    if spec is None:
        return out
    if isinstance(spec, Callbacks):
        for hook, actions in spec.get_registered_actions().items():
            for action in actions:
                out.register_action(hook, action["name"], action["callback"])
        return out
    if not isinstance(spec, dict):
        raise TypeError(f"callbacks must be a utils.callbacks.Callbacks or a dict of hook -> callable, "
                        f"got {type(spec).__name__}")
    for hook, fns in spec.items():
        for fn in fns if isinstance(fns, (list, tuple)) else [fns]:
            out.register_action(hook, getattr(fn, "__name__", ""), fn)
    return out
