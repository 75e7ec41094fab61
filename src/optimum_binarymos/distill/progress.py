"""The training progress bar of :class:`~optimum_binarymos.distill.DistillationTrainer`."""

from __future__ import annotations

from transformers.trainer_callback import ProgressCallback

#: Log entries shown in the bar's postfix, in this order.
SHOWN_TERMS = ("loss", "kd_logits", "kd_hidden")


class LossProgressCallback(ProgressCallback):
    """transformers' progress bar, with the latest loss terms in its postfix instead of one printed dict per log.

    Evaluation results are still printed (they are few); the training summary goes to ``trainer.state``.
    """

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or self.training_bar is None or not logs:
            return
        if any(key.startswith("eval_") for key in logs):
            super().on_log(args, state, control, logs=logs, **kwargs)
            return
        shown = {key: f"{logs[key]:.4g}" for key in SHOWN_TERMS if isinstance(logs.get(key), (int, float))}
        if shown:
            self.training_bar.set_postfix(shown, refresh=False)
