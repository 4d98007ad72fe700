"""Datasets and prompts: where each dataset lives and how it is validated (corpora), the training examples of
every stage-1 task and stage-2 dataset (training_data), and the Alpaca / translation prompts (prompts).
"""
