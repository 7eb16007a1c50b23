"""``pipesim score``: a real run's memory beside pipesim's prediction for the same scenario.

    python -m pipesim score scenarios/tiny.toml measured.csv [more files...] [--max-error 10]

    from pipesim.score import read, score
    s = score(pipesim.simulate(sc), [read("rank0.pickle"), read("rank1.pickle")])

One reader per format, each returning a ``Measured`` (``measured.py``): torch.cuda memory
snapshots (``snapshot.py``), torch.profiler memory timelines (``profiler_timeline.py``),
Megatron-LM ``report_memory`` logs (``megatron_log.py``) and a plain CSV
(``csv_timeline.py``); ``detect.py`` picks the reader from the file's content, ``scoring.py``
assigns ranks and compares, ``report.py`` writes the table, ``score.json`` and ``score.png``.
Nothing here is imported by the simulation.
"""
from pipesim.score.detect import read
from pipesim.score.measured import Measured, RankMeasure, ScoreError
from pipesim.score.scoring import Score, score

__all__ = ["Measured", "RankMeasure", "Score", "ScoreError", "read", "score"]
