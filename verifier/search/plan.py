"""What a region search will do, decided once: the options' "auto" and None settings resolved
against the network into a typed plan of stages. Every rule that depends on the network's shape
lives here; the stages read the plan and never decide again. (The measurements behind each rule
are in benchmarks/RESULTS.md.)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from verifier.bab.input_split import InputSplitSettings
from verifier.bab.search import BabSettings
from verifier.bounds.graph import resolve_device
from verifier.options import VerifyOptions


@dataclass(frozen=True)
class Plan:
    #: "chain": the dense ReLU chain engine (bab/layered.py; the measured fast path on MLPs);
    #: "graph": the bound engine over the whole graph (graph_stage.py); "none": intervals,
    #: symbolic bounds, LP and MIP only (option bab="off").
    engine: str
    depth: int  # ReLU layers (chain) or split nodes (graph) the searches may split
    alpha_crown: bool  # alpha-CROWN on every layer's bounds and on each disjunct
    lp_bounds: bool  # an LP bound per open disjunct over the whole network before the search
    bab: bool  # branch and bound in place of the MIP
    probe: bool  # a short search before the refinement (easy instances end there)
    refine_share: float  # share of the remaining time for refining layer bounds
    refine_mode: dict = field(default_factory=dict)  # order / on_witness of the refinement searches
    refine_stall: float = 0.0  # a pass gaining less than this share of the worst bound ends it
    output_bounds: bool = False  # layer bounds under each disjunct's negation for the final search
    settings: BabSettings = field(default_factory=BabSettings)
    #: branch and bound over the input box (input_stage.py) instead of all the stages above
    input_split: bool = False
    input_settings: InputSplitSettings = field(default_factory=InputSplitSettings)


def engines_to_try(options: VerifyOptions) -> tuple[str, ...]:
    """The engines a run tries, in order, the first that takes the network running it: without
    branch and bound ("off") none; the dense chain engine only on the CPU under engine="auto"
    (its measured fast path is MLPs: dense float64 matrices); the graph engine takes any
    network."""
    if options.bab == "off":
        return ("none",)
    if options.engine == "auto" and _on_cpu(options):
        return ("chain", "graph")
    return ("graph",)


def first_walk(options: VerifyOptions) -> str:
    """Which walk gives every run its first CROWN bounds: "graph", the bound engine's walk
    (graph_stage.crown), on a GPU, where the numpy one would be a detour through the CPU; on a
    CPU "numpy", the sparse back-substitution of bounds/symbolic.py, which equals it (to 1e-6 on
    graphs without a max; tests/test_graph_stages.py) and is much faster on convolutions: its
    rows stay as sparse as a neuron's receptive field, where the walk's are dense feature maps
    (measured on WK17a, see benchmarks/RESULTS.md). Every later bound is the walk's."""
    return "numpy" if _on_cpu(options) else "graph"


def _on_cpu(options: VerifyOptions) -> bool:
    return resolve_device(options.device).type == "cpu"


def make_plan(options: VerifyOptions, engine: str, depth: int, free_inputs: int | None = None) -> Plan:
    """The plan for a network whose engine is `engine` with `depth` split layers, on a region
    with `free_inputs` inputs that vary (None: many)."""
    if engine == "none" or options.exact:  # exact minima need the MIP
        bab = False
    elif engine == "graph":
        bab = True
    else:  # measured on chains: see options.bab_min_depth
        bab = depth > 0 and (options.bab == "on" or depth >= options.bab_min_depth)
    return Plan(engine=engine, depth=depth, alpha_crown=engine != "none", lp_bounds=_lp_bounds(engine, depth, bab),
                bab=bab, probe=bab and depth > 1, refine_share=_refine_share(options, depth),
                refine_mode=_refine_mode(depth), refine_stall=_refine_stall(options, depth),
                output_bounds=bab and _output_bounds(options, depth),
                settings=bab_settings(options, depth),
                input_split=_input_split(options, engine, free_inputs),
                input_settings=InputSplitSettings(batch=options.input_split_batch, heuristic=options.input_split_rule,
                                                  trial=options.input_split_trial, alpha_steps=options.input_split_alpha,
                                                  milp_relus=options.input_split_milp,
                                                  max_memory=memory_budget(options)))


def _input_split(options: VerifyOptions, engine: str, free_inputs: int | None) -> bool:
    """Whether the region is searched by halving its input box: under split="input", or "auto"
    on regions with at most `input_split_max` free inputs, where bounds over small boxes are
    nearly exact (ACAS Xu: five). Never without branch and bound (bab="off") or for exact minima
    (the MIP's job)."""
    if engine == "none" or options.exact or options.split == "relu":
        return False
    if options.split == "input":
        return True
    return free_inputs is not None and free_inputs <= options.input_split_max


def _lp_bounds(engine: str, depth: int, bab: bool) -> bool:
    """Whether each open disjunct gets an LP bound over the whole network before the search.
    Not on one hidden layer: optimised slopes reach the LP's bound already (the triangle
    relaxation's dual), so the LPs would only repeat it, at a large share of the time. Not on
    chains of 3+ ReLU layers searched by branch and bound either: there the LP, on the same
    layer bounds as alpha-CROWN, sits far below 0 and cannot prove a disjunct, yet takes a sizeable
    share of the time; adding it before refinement had answered no more instances. Not before a
    graph search (on CNNs the whole-network LP has millions of nonzeros). Measured on RSL18a,
    mnistfc 256x6 and resnet_4b, see benchmarks/RESULTS.md, "Why the defaults are what they are"."""
    if engine == "none":
        return True
    if engine == "graph":
        return not bab
    if depth == 1:
        return False
    return not (bab and depth >= 3)


def _refine_share(options: VerifyOptions, depth: int) -> float:
    """The share of the remaining time for refining layer bounds: with one ReLU layer there is
    nothing to refine; 0.1 on two, 0.8 deeper (option `refine_budget`)."""
    if options.refine_budget is not None:
        return options.refine_budget
    return 0.1 if depth <= 2 else 0.8


def _refine_mode(depth: int) -> dict:
    """How the refinement treats a neuron that a real point shows unstable (bab/refine.py). On
    two ReLU layers only the second is refined, and the final search gains most from neurons
    proven stable, so such a neuron is dropped and the specs progress alike; deeper, tightening
    the truly unstable neurons pays (refined_bounds' default)."""
    if depth <= 2:
        return {"order": "relative", "on_witness": "drop"}
    return {}


def _refine_stall(options: VerifyOptions, depth: int) -> float:
    """Option `refine_stall`; None is 0.05 on chains of 3+ ReLU layers and 0 (never) on two,
    whose short share is spent anyway."""
    if options.refine_stall is not None:
        return options.refine_stall
    return 0.05 if depth >= 3 else 0.0


def _output_bounds(options: VerifyOptions, depth: int) -> bool:
    """Whether the final search bounds each disjunct's domains with layer bounds under its own
    negation: "auto" at 3 or more split layers (ReLU layers of a chain, split nodes of a graph),
    where refinement has brought the disjuncts near 0 and the constraint bites (measured on
    chains; on CNNs the stages neither gain nor lose: benchmarks/RESULTS.md, "Why the defaults are
    what they are")."""
    if options.output_bound_layers == 0 or options.output_bound_rounds == 0:
        return False
    if options.output_bounds == "auto":
        return depth >= 3
    return options.output_bounds == "on"


def bab_settings(options: VerifyOptions, depth: int) -> BabSettings:
    """The search's settings; "auto" branching and unset steps depend on the depth: on one
    split layer cheap rounds win (gap branching, 4 steps), deeper the better splits (trial
    branching, 12 steps, its candidates and rank from the options)."""
    shallow = depth <= 1
    branching = options.bab_branching if options.bab_branching != "auto" else ("gap" if shallow else "trial")
    steps = options.bab_steps if options.bab_steps is not None else (4 if shallow else 12)
    queue = memory_budget(options)
    return BabSettings(batch=options.bab_batch, steps=steps, branching=branching, candidates=options.bab_candidates,
                       rank=options.bab_rank,
                       max_memory=queue, max_resident=queue + RUN_MEMORY)


#: Bytes a run may hold besides its search's queue before the search stops (the process's
#: resident memory against the queue's budget plus this): what a CIFAR CNN's run holds beside
#: its queue, with room to spare, since the queue's estimate alone did not keep whole runs within
#: 4 GB (measured on oval21, see benchmarks/RESULTS.md, "Why the defaults are what they are").
RUN_MEMORY = 1_300_000_000


def memory_budget(options: VerifyOptions) -> int:
    """Bytes for one search's open domains (option `bab_memory`; None: 2.5 GB, or an eighth of
    the machine's memory if that is less). Below 3 GB because the rest of a CIFAR CNN's run
    holds memory too and the queue's real footprint exceeds its estimate (search.domain_bytes),
    so a 3 GB queue let whole runs pass 4 GB (measured on oval21, see benchmarks/RESULTS.md,
    "Why the defaults are what they are")."""
    if options.bab_memory is not None:
        return int(options.bab_memory * 1e9)
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not a POSIX system: assume 8 GB
        physical = 8_000_000_000
    return int(min(2.5e9, physical // 8))
