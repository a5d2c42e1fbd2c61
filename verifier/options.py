"""Options of a verification run: one typed dataclass passed down the stages."""

from __future__ import annotations

from dataclasses import dataclass, fields

from solvers import check_solver
from verifier.errors import InputError

#: The options that take one of a few words, and those words.
_CHOICES = {"disjunctions": ("joint", "split"), "bab": ("auto", "on", "off"), "bab_branching": ("auto", "gap", "trial"),
            "bab_rank": ("weaker", "stronger"),
            "output_bounds": ("auto", "on", "off"), "engine": ("auto", "graph"), "split": ("auto", "input", "relu"),
            "input_split_rule": ("sensitivity", "widest")}


@dataclass
class VerifyOptions:
    timeout: float = 60.0  # seconds for the whole sample
    domain: tuple[float, float] | None = (0.0, 1.0)  # valid input range (None: unbounded)
    tolerance: float = 1e-5  # a margin must be proven > tolerance to count as robust
    attack_restarts: int = 6
    attack_steps: int = 40
    symbolic: bool = True  # CROWN bounds after interval arithmetic (plan.first_walk says which walk)
    lp_tightening: bool = True  # LP-tighten ambiguous ReLUs before a MIP
    lp_budget: float = 0.25  # share of the remaining time LP tightening may use
    # Open disjuncts in the MIP: "joint" (one MIP choosing among them; it answered more of mnistfc
    # 256x2) or "split" (one MIP each, most threatening first). Measured, see benchmarks/RESULTS.md,
    # "Why the defaults are what they are".
    disjunctions: str = "joint"
    # Bound propagation on plain ReLU chains (MLPs, CNNs as matrices): alpha-CROWN on every layer,
    # then branch and bound over ReLU splits instead of the MIP on chains of >= bab_min_depth
    # ReLU layers. "auto" as described, "on" (branch and bound on any chain), "off" (LP + MIP only).
    bab: str = "auto"
    bab_min_depth: int = 1
    alpha_steps: int = 20  # Adam steps on the slopes per layer (0: plain CROWN)
    alpha_budget: float = 0.3  # share of the remaining time alpha-CROWN may use
    bab_probe: float = 0.1  # share of the remaining time for branch and bound before refinement
    refine_first_pass: float = 2.0  # seconds per layer in the first refinement pass (then doubling)
    # Share of the remaining time the refinement of layer bounds may use; None: 0.1 on two ReLU
    # layers, 0.8 on deeper chains (where `refine_stall` ends it early once it stops paying).
    # On two layers the one refined layer gains little after a few seconds, so the search gets the
    # time; deeper chains keep gaining from refinement, and the stall rule hands the search back
    # what a refinement that no longer pays would spend. Measured on mnistfc, see
    # benchmarks/RESULTS.md, "Why the defaults are what they are".
    refine_budget: float | None = None
    # Refinement stops early after a pass that lifts the worst open disjunct's bound by less than
    # this share of its magnitude; None: 0.05 on chains of >= 3 ReLU layers, 0 on two.
    refine_stall: float | None = None
    refine_layers: int = 8  # ReLU layers (after the first) whose bounds branch and bound refines
    # Processes that share each branch-and-bound search (bab/parallel.py): a refinement search's
    # neuron bounds, the probe's and final search's disjuncts, or, with fewer disjuncts open than
    # processes, the search's domains. 1 keeps everything in this process; more pays when the
    # instance has the machine to itself (the VNN-COMP setting).
    # Helpers are spawned, so a script calling verifier.check needs `if __name__ == "__main__":`.
    processes: int = 1
    # Layer bounds under each disjunct's own negation for the final search (bab/output_bounds.py):
    # "auto" on chains of >= 3 ReLU layers, "on", "off"; the last `output_bound_layers` layers
    # in `output_bound_rounds` passes, within `output_bound_budget` of the remaining time.
    # 3 and 3 (was 2 and 2): tighter final bounds on deep chains in about the same time (measured
    # on mnistfc 256x6, see benchmarks/RESULTS.md, "Why the defaults are what they are").
    output_bounds: str = "auto"
    output_bound_layers: int = 3
    output_bound_rounds: int = 3
    output_bound_budget: float = 0.15
    bab_batch: int = 256  # domains split per branch-and-bound round
    # Memory (GB) the open domains of one branch and bound may take before it stops with the
    # bounds it has; None: 2.5 GB, or an eighth of the machine's memory if that is less, which
    # keeps a whole CIFAR run under 4 GB (one search per worker process, so parallel runs
    # multiply it).
    bab_memory: float | None = None
    # Branching rule: "gap" (BaBSR-style estimate), "trial" (filtered smart branching) or "auto":
    # gap on one hidden layer, trial on deeper chains. Adam steps on slopes and split multipliers
    # per round: None is 4 on one hidden layer, 12 on deeper chains. On one hidden layer cheap
    # rounds win, since a domain's bound is close to its LP after a few warm-started steps and the
    # search needs many domains; deeper chains need the better splits (measured on RSL18a and
    # mnistfc, see benchmarks/RESULTS.md, "Why the defaults are what they are").
    bab_branching: str = "auto"
    bab_steps: int | None = None
    # The trial rule's candidates per domain and which child ranks them ("weaker" or "stronger"):
    # many candidates ranked by their stronger child, measured on cifar10_resnet and mnistfc
    # (benchmarks/RESULTS.md, "Why the defaults are what they are").
    bab_candidates: int = 64
    bab_rank: str = "stronger"
    # Relax the binaries of last-hidden-layer ReLUs whose output can only raise a minimised
    # objective (exact: see EncodedNetwork.convex_binaries); per disjunct, so "split" MIPs only.
    convex_relus: bool = True
    mip_presolve: bool = True  # HiGHS presolve on the MIPs
    exact: bool = False  # compute the exact minimum margin (every label's MIP to optimality)
    seed: int = 0
    threads: int = 1  # HiGHS threads (fixed per process at its first solve)
    # The MIP solver: "highs" (native, the default) or a PuLP one ("cbc", "gurobi", ...; see
    # solvers.SOLVERS). Only the MIPs use it: LP bounds and QPs always run on native HiGHS.
    solver: str = "highs"
    # Where the bound engine runs: "cpu", or "cuda" ("cuda:1", ...) where torch sees a GPU.
    device: str = "cpu"
    # Which bound engine: "auto" (MLPs, i.e. chains of plain matrices and ReLUs on the CPU, take
    # the dense chain engine with its refinement stages, measured faster there; every other
    # network, and every network on a GPU, the engine over the graph) or "graph" (always).
    engine: str = "auto"
    # What branch and bound splits: "input" (halve the input box: bab/input_split.py), "relu"
    # (ReLU splits), or "auto": the input on regions with at most `input_split_max` free inputs
    # (ACAS Xu's five), where bounds over a small box are nearly exact, ReLUs otherwise.
    split: str = "auto"
    input_split_max: int = 8
    # Which input a box is halved along: "sensitivity" (the one whose spread costs the worst
    # bound most) or "widest" (relative to the region's box). Measured on ACAS Xu, see
    # benchmarks/RESULTS.md, "Why the defaults are what they are".
    input_split_rule: str = "sensitivity"
    # Each box is halved along each of its best `input_split_trial` inputs by that rule, and the
    # pair of halves whose bounds come out best is kept (1: the rule's pick alone).
    input_split_trial: int = 3
    input_split_batch: int = 128  # boxes halved per round
    # Adam steps on the output bound's ReLU slopes (alpha-CROWN) of each box CROWN leaves open
    # (0: CROWN alone).
    input_split_alpha: int = 10
    # A box with at most this many unstable ReLUs left, whose bound lies well below the least
    # slack seen in it, is decided by one MILP (bab/input_leaf.py) instead of being halved on
    # (0: never). Measured on ACAS Xu, see benchmarks/RESULTS.md, "ACAS Xu: all 186".
    input_split_milp: int = 30
    # On the graph engine, a network with at most `mip_stage_relus` ReLUs unstable after
    # alpha-CROWN (and a region still open after the probe search) gets LP-tightened bounds and
    # the MIP (HiGHS, under a cutoff) for `mip_stage_share` of the time left before the
    # refinement and the final search (0: never). Measured on oval21, see benchmarks/RESULTS.md,
    # "oval21 (issue 25): the MIP stage on the wide and deep nets too": where the MIP left a
    # region open, the searches after it did not close it either, and deep img5168 (692
    # unstable) needs most of the time left.
    mip_stage_relus: int = 700
    mip_stage_share: float = 0.9

    def __post_init__(self) -> None:
        for name, allowed in _CHOICES.items():
            if getattr(self, name) not in allowed:
                raise InputError(f"option {name}={getattr(self, name)!r}: expected one of {', '.join(allowed)}")
        for name, least in (("output_bound_layers", 0), ("output_bound_rounds", 0), ("refine_layers", 0),
                            ("processes", 1), ("input_split_max", 0), ("input_split_batch", 1),
                            ("input_split_trial", 1), ("input_split_alpha", 0),
                            ("input_split_milp", 0), ("mip_stage_relus", 0), ("bab_candidates", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise InputError(f"option {name}={value!r}: expected a whole number >= {least}")
        for name, low, high in (("refine_budget", 0.0, 1.0), ("output_bound_budget", 0.0, 1.0), ("mip_stage_share", 0.0, 1.0),
                                ("refine_stall", 0.0, float("inf")), ("bab_memory", 0.0, float("inf")),
                                ("bab_steps", 0, float("inf"))):
            value = getattr(self, name)
            if value is not None and (isinstance(value, (str, bool)) or not low <= value <= high):
                raise InputError(f"option {name}={value!r}: expected a number in [{low}, {high}] or None")
        from verifier.bounds.graph import resolve_device

        resolve_device(self.device)  # a clear InputError for a device torch cannot use
        try:
            check_solver(self.solver)
        except ValueError as e:
            raise InputError(str(e)) from None


def parse_setting(text: str, options_type: type = VerifyOptions) -> tuple[str, object]:
    """"name=value" -> (name, value typed like that field's default in `options_type`, a
    dataclass: VerifyOptions, or BabSettings for scripts that tune a search), for scripts that
    take option overrides on the command line. An unset (None) default takes an int, a float or
    else the word itself."""
    name, _, value = text.partition("=")
    known = {f.name: f.default for f in fields(options_type)}
    if name not in known:
        raise InputError(f"option {name!r}: not a {options_type.__name__} field")
    default = known[name]
    if isinstance(default, bool):
        return name, value.lower() in ("1", "true", "yes", "on")
    if default is None:
        for cast in (int, float):
            try:
                return name, cast(value)
            except ValueError:
                pass
        return name, value
    if isinstance(default, (int, float, str)):
        try:
            return name, type(default)(value)
        except ValueError:  # a mistyped number: name the option, do not leave a bare traceback
            raise InputError(f"option {name}={value!r}: expected {type(default).__name__}") from None
    raise InputError(f"option {name!r}: cannot be set from text")
