"""Cleaning stages of the data pipeline, run on a Ray Data dataset of corpus rows.

Rows carry `text`, optionally `label` (classification) and/or `target` (translation), `source` (where the row
came from), `row_id` (unique; smaller is earlier in the corpus) and `stage` / `reason`, both "" while the row is
kept. No stage removes rows: each one marks the rows it drops with its name in `stage` and a human-readable
`reason`, and skips rows an earlier stage dropped (so a dropped row never counts as the copy that is kept).
The caller then splits kept rows from quarantined ones.

Stages, in this order (`STAGES`), each optional except `empty`:
- normalize: NFKC, control characters removed, spaces and blank lines collapsed (text and target); drops nothing.
- empty: no text, or a missing label (labelled data) or target (translation data).
- length_chars: text shorter than `min_chars` or longer than `max_chars` characters.
- labels: a label outside the job's label set, or one text given different labels (all its rows dropped:
  nobody can tell which label is right).
- dedup_exact: every copy of a text (translation: of a text and target pair) but the earliest.
- dedup_near: MinHash LSH over lowercase word shingles. Two texts are near-duplicates when the estimated Jaccard
  similarity of their shingle sets reaches `threshold`: the share of distinct `shingle_words`-word sequences
  they have in common (0.8: about one word in thirty changed, with 3-word shingles). Near-duplicates are
  grouped transitively and each group keeps its earliest row.
Token-length limits (min_tokens / max_tokens) run later, once the tokenizer exists.

Decisions depend on row_id only, never on the order in which Ray delivers rows, so a rerun drops the same rows.
"""

import hashlib
import re
import unicodedata
from collections import defaultdict
from collections.abc import Iterable

import numpy as np
import ray.data
from ray.data.dataset import MaterializedDataset

from orchestrator.config.job import CleanConfig, NearDedupConfig

STAGES = ("normalize", "empty", "length_chars", "labels", "dedup_exact", "dedup_near")
_OPTIONAL_STRINGS = ("text", "label", "target")  # may hold None; a block of only None reaches numpy as float NaN
MINHASH_SEED = 1
_GROUP_KEY = "_clean_group"

_SPACES = re.compile(r"[ \t]+")
_BLANK_LINES = re.compile(r"\n{3,}")


# --- pure functions --------------------------------------------------------------------------------------------


def normalize_text(text: str) -> str:
    """NFKC (ligatures, full-width forms, odd spaces), control characters removed, runs of spaces and tabs made
    one space, lines stripped, at most one blank line in a row: copies that differ only in such noise become
    equal for deduplication, and the tokenizer never sees invisible characters."""
    lines = unicodedata.normalize("NFKC", text).splitlines()  # every line break (\r\n, \r, U+2028...) becomes \n
    text = "\n".join(_SPACES.sub(" ", _without_controls(line)).strip() for line in lines)
    return _BLANK_LINES.sub("\n\n", text).strip()


def _without_controls(line: str) -> str:
    """Drops Unicode category C* (control, format, private use, unassigned) except tabs."""
    if line.replace("\t", " ").isprintable():  # fast path: a printable line has no C* character
        return line
    return "".join(char for char in line if char == "\t" or unicodedata.category(char)[0] != "C")


def is_filled(value) -> bool:
    return isinstance(value, str) and bool(value.strip())


def row_verdict(
    text,
    required: dict,
    min_chars: int | None = None,
    max_chars: int | None = None,
    known_labels: set | None = None,
) -> tuple[str, str] | None:
    """(stage, reason) of the first row-level stage (empty, length_chars, unknown label) that drops this row,
    or None. `required`: the other fields that must be non-empty, by name (label, target); `known_labels`: the
    labels allowed, None when labels are not checked."""
    if not is_filled(text):
        return "empty", "empty text"
    for name, value in required.items():
        if not is_filled(value):
            return "empty", f"missing {name}"
    if min_chars and len(text) < min_chars:
        return "length_chars", f"shorter than min_chars ({len(text)} < {min_chars})"
    if max_chars and len(text) > max_chars:
        return "length_chars", f"longer than max_chars ({len(text)} > {max_chars})"
    if known_labels is not None and required["label"] not in known_labels:
        return "labels", f"unknown label {required['label']!r}"
    return None


def judge_copies(rows: Iterable[dict], check_conflicts: bool, dedup_exact: bool) -> dict[int, tuple[str, str]]:
    """{row_id: (stage, reason)} for kept rows (dicts with row_id, text, source, and label / target when the data
    has them) that share a text: rows of a text given different labels all go, then all but the earliest copy of
    each text (translation: text and target pair)."""
    by_text = defaultdict(list)
    for row in sorted(rows, key=lambda row: row["row_id"]):
        by_text[row["text"]].append(row)
    drops = {}
    for copies in by_text.values():
        labels = sorted({row["label"] for row in copies}) if check_conflicts else []
        if len(labels) > 1:
            drops.update({row["row_id"]: ("labels", f"conflicting labels: {', '.join(labels)}") for row in copies})
            continue
        if dedup_exact:
            first = {}
            for row in copies:
                kept = first.setdefault(row.get("target"), row)
                if kept is not row:
                    drops[row["row_id"]] = ("dedup_exact", f"duplicate of {kept['source']}")
    return drops


def shingles(text: str, words_per_shingle: int) -> list[str]:
    """Lowercase word n-grams: the units whose overlap near-deduplication measures. A text of fewer words is
    one shingle, so short texts still get a signature."""
    words = text.lower().split()
    if len(words) <= words_per_shingle:
        return [" ".join(words)]
    return [" ".join(words[i : i + words_per_shingle]) for i in range(len(words) - words_per_shingle + 1)]


def dedup_text(text: str, target) -> str:
    """What near-deduplication compares: the text, and for translation data its target too (like dedup_exact,
    one source sentence with two different translations is two examples)."""
    return text if target is None else f"{text}\n{target}"


# datasketch (with scipy: half a second) is imported where near-dedup runs, not by every driver (a cache hit cleans
# nothing)
def minhash_signatures(texts: Iterable[str], num_perm: int, words_per_shingle: int) -> list[np.ndarray]:
    """MinHash values of each text; the seed is fixed so every task computes comparable signatures."""
    from datasketch import MinHash

    template = MinHash(num_perm=num_perm, seed=MINHASH_SEED)
    signatures = []
    for text in texts:
        minhash = template.copy()
        minhash.update_batch([shingle.encode() for shingle in shingles(text, words_per_shingle)])
        signatures.append(minhash.hashvalues)
    return signatures


def lsh_bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows per band) minimising false positives plus false negatives at `threshold`, as datasketch's
    MinHashLSH picks them (its constructor refuses the single band it picks for e.g. 16 permutations at 0.9)."""
    from datasketch.lsh import _optimal_param

    return _optimal_param(threshold, num_perm, 0.5, 0.5)


def band_keys(signature: np.ndarray, bands: int, rows: int) -> list[int]:
    """One bucket key per band: texts sharing any band are candidate near-duplicates."""
    return [_hash64(band.to_bytes(2, "little") + signature[band * rows : (band + 1) * rows].tobytes()) for band in range(bands)]


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Estimated Jaccard similarity of two shingle sets: the share of equal MinHash values."""
    return float(np.mean(a == b))


def near_duplicates(pairs: Iterable[tuple[int, int]], signatures: dict[int, np.ndarray], sources: dict[int, str], threshold: float) -> dict[int, str]:
    """{row_id: reason} of the rows to drop: candidate pairs whose estimated similarity reaches `threshold` are
    joined into groups (union-find), and each group keeps its lowest row_id. The reason gives the similarity to
    the kept row, which a row joined through a chain of near-duplicates may have below `threshold`."""
    parent = {}

    def root(node: int) -> int:
        parent.setdefault(node, node)
        while parent[node] != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    for a, b in pairs:
        if jaccard(signatures[a], signatures[b]) >= threshold:
            low, high = sorted((root(a), root(b)))
            parent[high] = low
    drops = {}
    for node in parent:
        kept = root(node)
        if kept != node:
            similarity = jaccard(signatures[node], signatures[kept])
            drops[node] = f"near-duplicate (jaccard {similarity:.2f}) of {sources[kept]}"
    return drops


def _hash64(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little", signed=True)


# --- Ray Data batch functions (numpy batches) -----------------------------------------------------------------


def _strings(values: np.ndarray) -> np.ndarray:
    """An object array of str or None: Ray hands a column of only nulls over as float NaN."""
    return np.array([value if isinstance(value, str) else None for value in values], dtype=object)


def _rows(batch: dict) -> dict:
    """A writable copy of the row columns, string columns as object arrays."""
    rows = {name: values.copy() for name, values in batch.items() if name != _GROUP_KEY}
    rows.update({name: _strings(batch[name]) for name in _OPTIONAL_STRINGS if name in batch})
    rows.update({name: batch[name].astype(object) for name in ("stage", "reason", "source")})
    return rows


def _with_drops(batch: dict, drops: dict[int, tuple[str, str]]) -> dict:
    rows = _rows(batch)
    for i, row_id in enumerate(rows["row_id"]):
        if int(row_id) in drops:
            rows["stage"][i], rows["reason"][i] = drops[int(row_id)]
    return rows


def _row_stages(batch: dict, normalize: bool, min_chars, max_chars, known_labels, labelled: bool) -> dict:
    rows = _rows(batch)
    fields = (["label"] if labelled else []) + (["target"] if "target" in rows else [])
    for i in range(len(rows["row_id"])):
        if rows["stage"][i]:
            continue
        if normalize:
            for name in ("text", "target"):
                if name in rows and isinstance(rows[name][i], str):
                    rows[name][i] = normalize_text(rows[name][i])
        required = {name: rows[name][i] if name in rows else None for name in fields}
        verdict = row_verdict(rows["text"][i], required, min_chars, max_chars, known_labels)
        if verdict:
            rows["stage"][i], rows["reason"][i] = verdict
    return rows


def _add_group_key(batch: dict) -> dict:
    """Kept rows are grouped by a hash of their text; dropped ones each get a group of their own (by row_id),
    so that thousands of empty texts do not pile into one group."""
    keys = [
        _hash64(b"t" + text.encode() if stage == "" else b"r" + int(row_id).to_bytes(8, "little", signed=True))
        for text, stage, row_id in zip(batch["text"], batch["stage"], batch["row_id"])
    ]
    return {**_rows(batch), _GROUP_KEY: np.array(keys, dtype=np.int64)}


def _judge_group(group: dict, check_conflicts: bool, dedup_exact: bool) -> dict:
    names = [name for name in ("row_id", "text", "source", "label", "target") if name in group]
    kept = [{name: group[name][i] for name in names} for i in np.flatnonzero(group["stage"] == "")]
    for row in kept:
        row["row_id"] = int(row["row_id"])
    return _with_drops(group, judge_copies(kept, check_conflicts, dedup_exact))


def _kept_dedup_texts(batch: dict) -> tuple[np.ndarray, list[str]]:
    """The kept rows' positions in the batch and what near-deduplication compares of them."""
    kept = np.flatnonzero(batch["stage"] == "")
    target = batch.get("target")
    return kept, [dedup_text(batch["text"][i], target[i] if target is not None else None) for i in kept]


def _band_rows(batch: dict, num_perm: int, shingle_words: int, bands: int, rows: int) -> dict:
    """One (band key, row_id) row per band of each kept row: its signature is hashed into band keys and dropped."""
    kept, texts = _kept_dedup_texts(batch)
    keys = [band_keys(signature, bands, rows) for signature in minhash_signatures(texts, num_perm, shingle_words)]
    return {"band": np.array(keys, dtype=np.int64).reshape(-1), "row_id": np.repeat(batch["row_id"][kept], bands)}


def _bucket_pairs(bucket: dict) -> dict:
    """(lowest row_id, other row_id) for every other row of a band bucket."""
    row_ids = np.unique(bucket["row_id"])
    return {"kept": np.full(len(row_ids) - 1, row_ids[0], dtype=np.int64), "other": row_ids[1:].astype(np.int64)}


def _select(batch: dict, row_ids: np.ndarray) -> dict:
    chosen = np.isin(batch["row_id"], row_ids)
    return {name: values[chosen] for name, values in batch.items()}


# --- stages on a dataset ---------------------------------------------------------------------------------------


def clean(rows: ray.data.Dataset, cfg: CleanConfig, labels: list[str] | None, labelled: bool) -> ray.data.Dataset:
    """Runs the cleaning stages on `rows` (see the module docstring) and returns every row, the dropped ones
    marked in `stage` and `reason`. `labels`: the job's label set, None to accept any label; `labelled`: the
    rows have a `label` column to check. The result is materialized: the caller reads it twice (kept rows, then
    quarantined ones) without running the stages twice."""
    check_labels = labelled and cfg.check_labels
    rows = rows.map_batches(
        _row_stages,
        batch_format="numpy",
        fn_kwargs=dict(
            normalize=cfg.normalize,
            min_chars=cfg.min_chars,
            max_chars=cfg.max_chars,
            known_labels=set(labels) if check_labels and labels is not None else None,
            labelled=labelled,
        ),
    ).materialize()
    if (check_labels or cfg.dedup_exact) and rows.count():  # Ray's hash shuffle fails on a dataset without rows
        rows = (
            rows.map_batches(_add_group_key, batch_format="numpy")
            .groupby(_GROUP_KEY)
            .map_groups(
                _judge_group,
                batch_format="numpy",
                fn_kwargs=dict(check_conflicts=check_labels, dedup_exact=cfg.dedup_exact),
            )
            .materialize()
        )
    if cfg.dedup_near:
        rows = _dedup_near(rows, cfg.dedup_near)
    return rows


def _dedup_near(rows: MaterializedDataset, cfg: NearDedupConfig) -> MaterializedDataset:
    """MinHash LSH without a central index and without keeping signatures: tasks turn each kept row into its band keys
    (8 bytes a band, not 4 a permutation), the band buckets give the candidate pairs (few), and only the rows in
    them come to the driver, whose signatures it computes again to verify them."""
    bands, rows_per_band = lsh_bands(cfg.threshold, cfg.num_perm)
    banded = rows.map_batches(
        _band_rows,
        batch_format="numpy",
        fn_kwargs=dict(num_perm=cfg.num_perm, shingle_words=cfg.shingle_words, bands=bands, rows=rows_per_band),
    ).materialize()  # read twice: counted (Ray's shuffle fails on a dataset without rows), then bucketed
    if not banded.count():
        return rows
    candidates = banded.groupby("band").map_groups(_bucket_pairs, batch_format="numpy")
    pairs = set()
    for batch in candidates.iter_batches(batch_format="numpy", batch_size=None):
        pairs.update(zip(batch["kept"].tolist(), batch["other"].tolist()))
    if not pairs:
        return rows
    involved = np.array(sorted({row_id for pair in pairs for row_id in pair}), dtype=np.int64)
    signatures, sources = {}, {}
    for batch in rows.map_batches(_select, batch_format="numpy", fn_kwargs=dict(row_ids=involved)).iter_batches(batch_format="numpy", batch_size=None):
        kept, texts = _kept_dedup_texts(batch)
        for i, signature in zip(kept, minhash_signatures(texts, cfg.num_perm, cfg.shingle_words)):
            row_id = int(batch["row_id"][i])
            signatures[row_id], sources[row_id] = signature, batch["source"][i]
    drops = near_duplicates(pairs, signatures, sources, cfg.threshold)
    drops = {row_id: ("dedup_near", reason) for row_id, reason in drops.items()}
    return rows.map_batches(_with_drops, batch_format="numpy", fn_kwargs=dict(drops=drops)).materialize()
