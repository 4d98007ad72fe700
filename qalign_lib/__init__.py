"""qalign: reproducible QAlign (Zhu et al. 2024). See README.md."""

__version__ = "0.1.0"
