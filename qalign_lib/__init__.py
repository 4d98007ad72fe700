"""qalign: reproducible QAlign (Zhu et al. 2024). See README.md."""
import os

# CPU threads wait for each other passively (sleep) instead of spinning. Measured on a 2-core machine shared with
# one other busy process: greedy generation of SmolLM2-135M ran at 2.4 tokens/s with torch's 2 spinning OpenMP
# threads, 17 with 2 passive ones, 21 with 1 (a descheduled spinning thread stalls every parallel region). libgomp
# reads it when torch loads it, so it is set here, before anything imports torch; an explicit value wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
