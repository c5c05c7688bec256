"""Source formats: ``cml`` pickles, ``mbcgcn`` text, ``events`` logs, ``synthetic``."""

FORMATS = ("cml", "mbcgcn", "events", "synthetic")
