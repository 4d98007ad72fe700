"""Training: the trainer every stage builds (training), the accelerate launcher for several processes (launch), and
the two stages as entry points (stages).
"""
