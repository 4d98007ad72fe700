"""Evaluation on the benchmarks: generating and storing answers (evaluator), answer extraction and accuracy as named
scorers (scoring), and spreading the questions over several engines (sharding).
"""
