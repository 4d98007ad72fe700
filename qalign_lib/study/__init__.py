"""Studies: a study file resolved into runs, systems and analyses (studies), and the planner/executor that runs its
notebooks in order and skips what is done (runner).
"""
