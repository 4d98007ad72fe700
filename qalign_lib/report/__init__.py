"""The report of a study: results collected per system (results), tables with bootstrap CIs and the paper's numbers
(tables), matplotlib figures (figures), and the report folder written whole (document).
"""
