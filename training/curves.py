"""Training curves: train / validation loss per epoch as JSON and as a PNG plot."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)


def write_curve(history: list[dict[str, float]], out_dir: Path) -> None:
    (out_dir / "training_curve.json").write_text(json.dumps(history, indent=2) + "\n")
    if not history:
        return
    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(epochs, [h["train_loss"] for h in history], marker="o", label="train (label-smoothed)")
    ax.plot(epochs, [h["val_loss"] for h in history], marker="o", label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("cross-entropy per token")
    ax.set_title(out_dir.name)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "training_curve.png", dpi=80)
    plt.close(fig)
