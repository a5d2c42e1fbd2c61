from verifier.bounds.interval import interval_bounds, output_rows_lower
from verifier.bounds.lp import safe_lower_bound, tighten_with_lp
from verifier.bounds.symbolic import backward_lower, symbolic_bounds

__all__ = ["interval_bounds", "output_rows_lower", "safe_lower_bound", "tighten_with_lp",
           "backward_lower", "symbolic_bounds"]
