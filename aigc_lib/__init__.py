"""aigc_lib — the tested library behind the "AIGC from scratch" notebook course."""

from aigc_lib.runtime import budget, current_budget, get_device, seed_everything, setup

__version__ = "0.1.0"
__all__ = ["budget", "current_budget", "get_device", "seed_everything", "setup", "__version__"]
