"""The data report: rows in and out of every stage with the reasons rows were dropped, token counts and the length
histogram. Built while the quarantine file is written, summarised in the job log, logged to MLflow
(tracking/data_report.py) and kept in the cache entry, so a cache hit reports the same."""

import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field

import numpy as np

from orchestrator.data.clean import STAGES

# Every stage in pipeline order: reading, the cleaning stages, then the token-length filter and (question answering)
# the answers that the tokenized context does not hold.
ALL_STAGES = ("read", *STAGES, "length_tokens", "answer_span")
HISTOGRAM_BINS = 20


def reason_kind(reason: str) -> str:
    """What a reason says, without its particulars: 'duplicate of a.jsonl:3' -> 'duplicate',
    "unknown label 'x'" -> 'unknown label', 'longer than max_chars (412 > 400)' -> 'longer than max_chars'."""
    return re.split(r" of |[:('0-9]", reason, maxsplit=1)[0].strip() or reason


@dataclass
class DataReport:
    rows_read: int = 0
    dropped: dict[str, dict[str, int]] = field(default_factory=dict)  # stage -> reason kind -> rows
    rows_kept: int = 0
    augmented_rows: int = 0
    tokens: int = 0  # in the kept texts, before packing or truncation
    length_bins: list[float] = field(default_factory=list)  # token-length histogram edges
    length_counts: list[int] = field(default_factory=list)
    train_sequences: int = 0
    val_sequences: int = 0
    seconds: float = 0.0  # preparing (on a cache hit: the run that prepared the entry)
    cache: str = "off"  # off, miss (prepared and stored) or hit (loaded)
    loaded_seconds: float = 0.0  # loading the entry, on a cache hit

    def stage_table(self) -> list[dict]:
        """One row per stage: rows in, dropped, out, and the reasons."""
        table, rows = [], self.rows_read
        for stage in ALL_STAGES:
            reasons = self.dropped.get(stage, {})
            dropped = sum(reasons.values())
            table.append(
                {
                    "stage": stage,
                    "rows_in": rows,
                    "dropped": dropped,
                    "rows_out": rows - dropped,
                    "reasons": "; ".join(f"{kind}: {count}" for kind, count in sorted(reasons.items())),
                }
            )
            rows -= dropped
        return table

    def summary_lines(self) -> list[str]:
        lines = [f"data: {self.rows_read:,} rows read, {self.rows_kept:,} kept (cache: {self.cache})"]
        for row in self.stage_table():
            if row["dropped"]:
                lines.append(f"data:   {row['stage']}: -{row['dropped']:,} ({row['reasons']})")
        if self.augmented_rows:
            lines.append(f"data: +{self.augmented_rows:,} augmented training rows")
        took = (
            f"loaded in {self.loaded_seconds:.1f} s (prepared in {self.seconds:.1f} s when cached)"
            if self.cache == "hit"
            else f"prepared in {self.seconds:.1f} s"
        )
        lines.append(f"data: {self.tokens:,} tokens; {self.train_sequences:,} train and {self.val_sequences:,} validation sequences; {took}")
        return lines

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "DataReport":
        return cls(**json.loads(text))


def count_dropped(rows: Iterable[dict]) -> dict[str, dict[str, int]]:
    counts: dict[str, Counter] = {}
    for row in rows:
        counts.setdefault(row["stage"], Counter())[reason_kind(row["reason"])] += 1
    return {stage: dict(counter) for stage, counter in counts.items()}


def length_summary(counts: np.ndarray) -> tuple[int, int, list[float], list[int]]:
    """From the number of texts of each token length (`counts[n]`: texts of n tokens): the texts, their tokens, and
    the token-length histogram's edges and counts (HISTOGRAM_BINS bins, or one per length when there are fewer), as
    np.histogram would bin the lengths themselves."""
    lengths = np.flatnonzero(counts)
    if not len(lengths):
        return 0, 0, [], []
    shortest, longest = int(lengths[0]), int(lengths[-1])
    edges = np.histogram_bin_edges([shortest, longest], bins=min(HISTOGRAM_BINS, max(longest - shortest, 1)))
    histogram = np.histogram(lengths, edges, weights=counts[lengths])[0]
    return int(counts.sum()), int(lengths @ counts[lengths]), edges.tolist(), histogram.astype(int).tolist()


def quarantine_records(rows: Iterator[dict], columns: tuple[str, ...]) -> Iterator[dict]:
    """Quarantine file lines: where the row came from, which stage dropped it and why, and the row itself."""
    for row in rows:
        yield {
            "source": row["source"],
            "stage": row["stage"],
            "reason": row["reason"],
            "row": {column: row.get(column) for column in columns},
        }
