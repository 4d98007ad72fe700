"""The bottom layer, used by everything: errors, logging, files, languages, the benchmark registry, the declared
configuration, the run layout, locks and the tested version sets. Imports nothing else from qalign_lib.
"""
