"""Bounds shared by datasets, runs and studies (imports nothing, so configuration checks stay cheap)."""

SEED_MAX = 2**32 - 1  # numpy's seeds: the largest a dataset, run or study may use
