"""The Frepa study of ``tools/reproduce.py``: does pretraining keep high frequencies, measured honestly.

- :mod:`.protocol`: presets, variants, the data split by subject, all fixed before a run;
- :mod:`.runs`: the cached pretraining runs, probe scores and end-to-end runs;
- :mod:`.report`: the claims, their smallest effect of interest, bootstrap intervals, verdicts, the Markdown page;
- :mod:`.figures`: its figures;
- :mod:`.reproduce`: the command line.
"""
