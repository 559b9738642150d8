"""Error codes a task can end with, and what they mean in words (YMIR's executor codes and ours)."""

from __future__ import annotations

from django.utils.translation import gettext_lazy as _

MEANINGS = {
    # ours
    "worker_lost": _("The worker running this task stopped before it finished."),
    "host_lost": _("The worker host running this task stopped answering."),
    "run_lost": _("The executor's container or process disappeared while it ran."),
    "launch_failed": _("The executor could not be started."),
    "launch_crashed": _("Starting the executor killed its worker repeatedly."),
    "executor_exit": _("The executor ended with a non-zero exit status."),
    "executor_error": _("The executor reported an error in monitor.txt."),
    "bad_output": _("The executor's results do not follow the contract."),
    "timeout": _("The run took longer than its time limit."),
    "cancelled": _("Cancelled by the user."),
    "image_invalid": _("The image is not a valid executor image."),
    "image_missing": _("The image cannot be found or pulled."),
    # YMIR executor codes (monitor.txt)
    "300001": _("Executor: invalid configuration."),
    "300002": _("Executor: invalid or missing data."),
    "300003": _("Executor: invalid or missing model."),
    "300004": _("Executor: the dataset is too small or unusable."),
    "300101": _("Executor: CUDA error."),
    "300102": _("Executor: out of GPU memory."),
    "300201": _("Executor: the loss became NaN (training diverged)."),
    "300301": _("Executor: a network access failed."),
}


def error_meaning(code: str) -> str:
    if code in MEANINGS:
        return str(MEANINGS[code])
    if code.startswith("3000"):
        return str(_("Executor: a configuration, data or model error."))
    if code.startswith("3001"):
        return str(_("Executor: a GPU or CUDA error."))
    return str(_("Unknown error code."))
