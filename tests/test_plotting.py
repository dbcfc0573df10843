"""pochitrain.plotting: the shared matplotlib set-up."""

from __future__ import annotations

import io

import numpy as np

from pochitrain.plotting import figure, tight_layout


def _png(lay_out: object) -> tuple[bytes, object]:
    fig = figure(figsize=(6, 4))
    ax = fig.add_subplot()
    for i in range(12):
        ax.plot(np.arange(10), np.arange(10) * (i + 1), label=f"layer{i}.weight")
    ax.set_title("勾配 / gradients")
    ax.legend(fontsize=6, ncol=2)
    lay_out(fig)  # type: ignore[operator]
    engine = fig.get_layout_engine()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    return buffer.getvalue(), engine


def test_tight_layout_leaves_no_engine_and_the_same_picture() -> None:
    plain, placeholder = _png(lambda fig: fig.tight_layout())
    ours, none = _png(tight_layout)
    assert placeholder is not None and none is None  # savefig lays the figure out once
    assert ours == plain and ours.startswith(b"\x89PNG")
