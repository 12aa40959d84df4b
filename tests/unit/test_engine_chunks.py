"""How the batch engine's jobs cut their chunks (`runner.engine.reader.cut_at_batches`, restore's backup
pages): at most a page, never across a batch boundary. Pure: no stack needed."""

from __future__ import annotations

import pytest

from runner.engine.reader import cut_at_batches
from runner.jobs.restore import RestoreConfig, RestoreJob


@pytest.mark.parametrize(
    ("n", "batch_size", "page_size", "expected"),
    [
        (10, 4, 100, [4, 4, 2]),
        (10, 0, 3, [3, 3, 3, 1]),
        (10, 4, 3, [3, 1, 3, 1, 2]),
        (0, 4, 3, []),
        (8, 4, 4, [4, 4]),
    ],
)
def test_cut_at_batches(n, batch_size, page_size, expected):
    chunks = list(cut_at_batches(iter(range(n)), batch_size, page_size))
    assert [len(c) for c in chunks] == expected
    assert [i for c in chunks for i in c] == list(range(n))


@pytest.mark.parametrize(
    ("pages", "batch_size", "expected"),
    [
        ([5, 5], 3, [3, 2, 1, 3, 1]),
        ([5, 5], 0, [5, 5]),
        ([2, 2, 2], 4, [2, 2, 2]),
        ([4], 1, [1, 1, 1, 1]),
    ],
)
def test_restore_cuts_backup_pages_at_batch_boundaries(pages, batch_size, expected, monkeypatch):
    job = RestoreJob(RestoreConfig("job-a", "undo-a", batch_size=batch_size), "postgresql://unused")
    items = iter(range(100))
    monkeypatch.setattr(job, "_pages", lambda team_id: iter([[next(items) for _ in range(n)] for n in pages]))
    chunks = list(job.chunks(1))
    assert [len(c) for c in chunks] == expected
    # Batch boundaries every batch_size entries.
    if batch_size:
        ends = [sum(len(c) for c in chunks[: i + 1]) for i in range(len(chunks))]
        for boundary in range(batch_size, sum(pages), batch_size):
            assert boundary in ends
