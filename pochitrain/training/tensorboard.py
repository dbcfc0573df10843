"""TensorBoard event files with the original pochitrain's tags (config ``enable_tensorboard``).

Tags: ``Loss/train``, ``Accuracy/train``, ``LearningRate/base``, ``Loss/val``,
``Accuracy/val`` (accuracy in percent, as the original logged it) and, with layer-wise
learning rates, ``LearningRate/lr_<group>``. TensorBoard is an optional extra:
``pip install "pochitrain[tensorboard]"``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pochitrain.errors import BackendMissingError

if TYPE_CHECKING:
    from pochitrain.training.metrics import EpochRow


class TensorBoardLog:
    def __init__(self, log_dir: Path) -> None:
        try:
            import tensorboard  # noqa: F401 - torch.utils.tensorboard needs it
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise BackendMissingError(
                "TensorBoard がインストールされていません\n"
                "enable_tensorboard = True but TensorBoard is not installed.",
                'Install it with: pip install "pochitrain[tensorboard]" (or set '
                "enable_tensorboard = False).") from exc
        self.writer: SummaryWriter = SummaryWriter(log_dir=str(log_dir))

    def log(self, row: EpochRow) -> None:
        w, step = self.writer, row.epoch
        w.add_scalar("Loss/train", row.train_loss, step)
        w.add_scalar("Accuracy/train", 100.0 * row.train_accuracy, step)
        w.add_scalar("LearningRate/base", row.lr, step)
        w.add_scalar("Loss/val", row.val_loss, step)
        w.add_scalar("Accuracy/val", 100.0 * row.val_accuracy, step)
        for group, lr in row.group_lrs.items():
            w.add_scalar(f"LearningRate/lr_{group}", lr, step)
        w.flush()

    def close(self) -> None:
        self.writer.close()
