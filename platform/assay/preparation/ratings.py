"""Recommendation: MovieLens-100K explicit ratings (943 users, 1,682 films, 1-5 stars).

Split per user (`prepare.ratings.split`). `time` (the default): each user's ratings in time order,
the latest `test_fraction` to test, the `val_fraction` before them to val, the rest to train.
`random`: the same fractions of each user's ratings, drawn with the seed. Every user has >= 20
ratings, so each split holds every user. Ranking: for each user, their latest test rating is
ranked against `prepare.ratings.negatives` films they never rated (sampled once, with the seed):
HR@10, NDCG@10. Each split keeps the ratings' Unix timestamps (`t`).
Ids are 0-based indices; `meta` maps them back to MovieLens ids. Where the fetch brought the
films' file (`ml-100k.item`), `meta` also lists each film's attributes: its genres and its release
period, which the recommenders' attribute bias reads; where it brought the users' (`ml-100k.user`),
each user's age, gender and occupation, by which `evaluate` scores slices of the test split.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from assay.preparation.common import fetch_wheel_member


def fetch(name: str, cfg, dest: Path) -> None:
    fetch_wheel_member(cfg.pin("movielens"), dest)


def prepare(name: str, raw: Path, source: dict, cfg) -> tuple[dict, dict]:
    # RecBole's atomic file: a header like `user_id:token`, then tab-separated rows.
    data = np.loadtxt(raw / source["file"], delimiter="\t", skiprows=1, dtype=np.int64)
    users_raw, items_raw, rating, ts = data.T
    user_ids, u = np.unique(users_raw, return_inverse=True)
    item_ids, i = np.unique(items_raw, return_inverse=True)
    order = np.lexsort((i, ts, u))  # by user, then time (ties: item id), stable
    u, i, r, ts = u[order], i[order], rating[order].astype(np.float32), ts[order]
    starts = np.flatnonzero(np.r_[True, u[1:] != u[:-1]])
    ends = np.r_[starts[1:], len(u)]
    if cfg.ratings.split == "random":  # shuffle within each user; the fractions below still hold
        shuffle = np.random.default_rng(cfg.seed + 1)
        order = np.concatenate(
            [a + shuffle.permutation(b - a) for a, b in zip(starts, ends, strict=True)]
        )
        i, r, ts = i[order], r[order], ts[order]
    split = np.zeros(len(u), np.int8)  # 0 train, 1 val, 2 test
    for a, b in zip(starts, ends, strict=True):
        n = b - a
        n_test = max(1, math.ceil(cfg.test_fraction * n))
        n_val = max(1, math.ceil(cfg.val_fraction * n))
        split[b - n_test : b] = 2
        split[b - n_test - n_val : b - n_test] = 1
    splits = {
        name: {"u": u[split == k], "i": i[split == k], "r": r[split == k], "t": ts[split == k]}
        for k, name in enumerate(("train", "val", "test"))
    }
    # Ranking: the latest test item of each user against never-rated items.
    rng = np.random.default_rng(cfg.seed)
    n_users, n_items = len(user_ids), len(item_ids)
    rated = np.zeros((n_users, n_items), bool)
    rated[u, i] = True
    last_test = np.array(  # each user's latest test rating
        [
            b - 1 - np.argmax(np.where(split[a:b] == 2, ts[a:b], -1)[::-1])
            for a, b in zip(starts, ends, strict=True)
        ]
    )
    candidates = np.empty((n_users, 1 + cfg.ratings.negatives), np.int64)
    for user in range(n_users):
        pool = np.flatnonzero(~rated[user])
        negs = rng.choice(pool, size=min(cfg.ratings.negatives, len(pool)), replace=False)
        candidates[user, 0] = i[last_test[user]]
        candidates[user, 1:] = negs
    splits["test"]["rank_items"] = candidates  # column 0 is the held-out positive
    meta = {
        **film_attributes(raw, source, item_ids),
        **user_attributes(raw, source, user_ids),
        "n_users": int(n_users),
        "n_items": int(n_items),
        "rating_range": [float(r.min()), float(r.max())],
        "train_mean": float(splits["train"]["r"].mean()),
        "negatives": cfg.ratings.negatives,
        "split": cfg.ratings.split,
        "user_ids": user_ids.tolist(),
        "item_ids": item_ids.tolist(),
    }
    return splits, meta


def _atomic_file(raw: Path, source: dict, suffix: str):
    """(name, column index by field, rows) of the fetched RecBole atomic file ending in
    `suffix` (a header like `item_id:token`, then tab-separated rows), or None without it."""
    names = [Path(f).name for f in source.get("also", []) if f.endswith(suffix)]
    if not names:
        return None
    with open(raw / names[0], encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    col = {h.split(":")[0]: k for k, h in enumerate(rows[0])}
    return names[0], col, rows[1:]


# Release periods, as film attributes: about equally many films in the recent ones.
PERIODS = ((0, 1960), (1960, 1980), (1980, 1990), (1990, 1995), (1995, 1997), (1997, 10_000))


def film_attributes(raw: Path, source: dict, item_ids: np.ndarray) -> dict:
    """{"item_attribute_names": [...], "item_attributes": [[index, ...] per item]} from
    RecBole's ml-100k.item (genres; release period from the year), or {} without that file."""
    found = _atomic_file(raw, source, ".item")
    if found is None:
        return {}
    _, col, rows = found
    films: dict[int, list[str]] = {}
    for row in rows:
        tags = [f"genre {g}" for g in row[col["class"]].split() if g != "unknown"]
        year = row[col["release_year"]]
        if year.isdigit():
            lo, hi = next(p for p in PERIODS if p[0] <= int(year) < p[1])
            span = f"before {hi}" if not lo else f"{lo}-{hi - 1}" if hi < 10_000 else f"{lo}+"
            tags.append(f"released {span}")
        films[int(row[col["item_id"]])] = tags
    vocabulary = sorted({t for tags in films.values() for t in tags})
    index = {t: k for k, t in enumerate(vocabulary)}
    return {
        "item_attribute_names": vocabulary,
        "item_attributes": [[index[t] for t in films.get(int(i), [])] for i in item_ids],
    }


def user_attributes(raw: Path, source: dict, user_ids: np.ndarray) -> dict:
    """{"user_attributes": {"age": [...], "gender": [...], "occupation": [...]}} per user index,
    from RecBole's ml-100k.user, or {} without that file. `evaluate` scores the slices by them;
    no model reads them."""
    found = _atomic_file(raw, source, ".user")
    if found is None:
        return {}
    name, col, rows = found
    users = {int(row[col["user_id"]]): row for row in rows}
    missing = [int(u) for u in user_ids if int(u) not in users]
    if missing:
        raise ValueError(f"{name} lacks users {missing[:5]} of the ratings")
    picked = [users[int(u)] for u in user_ids]
    return {
        "user_attributes": {
            "age": [int(row[col["age"]]) for row in picked],
            "gender": [row[col["gender"]] for row in picked],
            "occupation": [row[col["occupation"]] for row in picked],
        }
    }


def history_positions(u: np.ndarray, i: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Each rating's place in its user's history: k/n for the k-th of the user's n ratings in
    time order (ties by item id, as the split orders them)."""
    order = np.lexsort((i, t, u))
    users = u[order]
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    n = np.diff(np.r_[starts, len(users)])
    rank = np.arange(len(users)) - np.repeat(starts, n) + 1
    position = np.empty(len(u), np.float32)
    position[order] = rank / np.repeat(n, n)
    return position
