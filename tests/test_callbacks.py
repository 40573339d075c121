"""The callback registry (utils/callbacks.py) and the hooks the trainer fires, over one shared 1-epoch run."""
from __future__ import annotations

import itertools

import pytest

from utils.callbacks import HOOKS, Callbacks, as_callbacks
from utils.loggers import RESULT_KEYS


def test_unknown_hook_is_refused_naming_it():
    with pytest.raises(ValueError, match="'on_epoch_end'.*on_pretrain_routine_start"):
        Callbacks().register_action("on_epoch_end", callback=print)
    with pytest.raises(ValueError, match="'on_epoch_end'"):
        as_callbacks({"on_epoch_end": print})
    with pytest.raises(TypeError, match="must be callable"):
        Callbacks().register_action("on_train_end", callback="print")
    with pytest.raises(ValueError, match="'on_val_image_end'"):
        Callbacks().run("on_val_image_end")


def test_train_run_refuses_a_bad_hook_before_any_work(tmp_path):
    import train

    with pytest.raises(ValueError, match="unknown callback hook 'on_batch_end'"):
        train.run(epochs=1, project=str(tmp_path), callbacks={"on_batch_end": print})
    assert not any(tmp_path.iterdir())  # no run folder was claimed


def test_dict_and_object_forms_are_copied_in_order():
    seen = []
    user = Callbacks()
    user.register_action("on_train_start", "a", lambda: seen.append("a"))
    copy = as_callbacks(user)
    copy.register_action("on_train_start", "logger", lambda: seen.append("logger"))
    assert len(user.get_registered_actions("on_train_start")) == 1  # the caller's object is left alone
    copy.run("on_train_start")
    as_callbacks({"on_train_start": [lambda: seen.append("b"), lambda: seen.append("c")]}).run("on_train_start")
    assert seen == ["a", "logger", "b", "c"]


def test_user_callback_sees_every_hook_in_order(tracked_run):
    """train.run(callbacks=...) over 1 epoch: 24 images in 3 batches, 8 validation images in 1 batch, validated
    after the epoch; best.pt holds those weights, so its check scores that pass again (on_val_end alone)."""
    run_dir, calls, _, _ = tracked_run
    order = [hook for hook, _ in itertools.groupby(h for h, _, _ in calls)]
    val = ["on_val_start", "on_val_batch_start", "on_val_batch_end", "on_val_end"]
    assert order == ["on_pretrain_routine_start", "on_pretrain_routine_end", "on_train_start", "on_train_epoch_start",
                     *["on_train_batch_start", "on_train_batch_end"] * 3, "on_train_epoch_end", *val,
                     "on_fit_epoch_end", "on_model_save", "on_val_end", "on_train_end", "teardown"]
    assert set(HOOKS) == set(order)  # every hook fired
    args = {hook: (a, k) for hook, a, k in calls}  # the last call of each hook
    labels, names = args["on_pretrain_routine_end"][0]
    assert labels.shape[1] == 5 and len(labels) > 0 and names == ["circle", "square", "triangle"]
    model, ni, imgs, targets, paths, vals = args["on_train_batch_end"][0]
    assert ni == 2 and imgs.shape[-1] == 64 and len(paths) == imgs.shape[0] and len(vals) == 3
    assert args["on_train_epoch_end"] == ((), {"epoch": 0})
    log_vals, epoch, best_fitness, fi = args["on_fit_epoch_end"][0]
    assert len(log_vals) == len(RESULT_KEYS) and epoch == 0 and best_fitness == fi
    last, epoch, final_epoch, _, _ = args["on_model_save"][0]
    assert last == run_dir / "weights" / "last.pt" and epoch == 0 and final_epoch is True
    assert "map50" in args["on_val_end"][0][0]
    last, best, epoch, results = args["on_train_end"][0]
    assert best.exists() and epoch == 0 and len(results) == 7


def test_results_csv_and_tensorboard_are_loggers_with_unchanged_output(tracked_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tracked_run[0]
    rows = (run_dir / "results.csv").read_text().splitlines()
    assert rows[0] == ",".join(["%20s" % "epoch", *("%20s" % k for k in RESULT_KEYS)])
    assert len(rows) == 2 and rows[1].split(",")[0] == "%20i" % 0
    events = EventAccumulator(str(run_dir)).Reload()
    assert sorted(events.Tags()["scalars"]) == sorted(RESULT_KEYS)
    assert [e.step for e in events.Scalars("metrics/mAP_0.5")] == [0]
