from verifier.bounds.interval import interval_bounds, margin_interval
from verifier.bounds.lp import safe_lower_bound, tighten_with_lp

__all__ = ["interval_bounds", "margin_interval", "safe_lower_bound", "tighten_with_lp"]
