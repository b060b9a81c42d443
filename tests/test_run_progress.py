"""Progress lines of batch runs (what a user sees when output goes to a file or CI)."""

from __future__ import annotations

import re

from meshpose.run.progress import RateLogger


def test_lines_every_n_images_and_at_the_end_with_rate_and_eta() -> None:
    lines: list[str] = []
    progress = RateLogger("refine [contour]", every=4, max_interval_s=1e9, emit=lines.append)
    for done in range(1, 11):
        progress(done, 10, (1, done))
    # images 4 and 8, and the last one
    assert [re.search(r": (\d+)/10", s).group(1) for s in lines] == ["4", "8", "10"]  # type: ignore[union-attr]
    assert all("images/s" in s and "ETA" in s for s in lines)
    assert "(100%)" in lines[-1] and "ETA 0s" in lines[-1] and "scene 1 image 10" in lines[-1]


def test_a_line_after_max_interval_even_between_steps() -> None:
    lines: list[str] = []
    progress = RateLogger("run", every=1000, max_interval_s=0.0, emit=lines.append)
    progress(1, 5000, (1, 1))
    progress(2, 5000, (1, 2))
    assert len(lines) == 2 and "2/5000" in lines[1]
