"""What the notebooks call beside the method: checking papermill's injected parameters (parameters) and showing
configs, runs, metrics and generations inline (display).
"""
