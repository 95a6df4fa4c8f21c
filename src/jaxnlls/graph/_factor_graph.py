"""``FactorGraph``: build once on the host, solve (and differentiate) many times."""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._compile import entry_jit
from .._implicit import first_order_only
from .._misc import is_float_array, stop_gradient_arrays
from .._solution import RESULTS, Solution, Stats
from ..linear import AbstractStepSolver, DenseCholesky, is_rank_deficient
from ..linear._blocksparse import BlockSparseLinearization
from ..linear._dense import LOOP_N
from ..linear._pcg import BlockJacobiPCG, pcg
from ..linear._schur import SchurComplement
from ..linear._sparse import SparseCholesky, sparse_solve
from ..solvers import AbstractSolver
from . import _graph as G
from ._factor import Factor
from ._lm import GraphLevenbergMarquardt
from ._var import Var, VarValues

#: Dense Cholesky up to this many tangent coordinates (``linear._dense.LOOP_N``). Under ``vmap``
#: dense solves run one batched LAPACK ``potrf`` per iteration (``linear._dense._batched_rule``);
#: beyond this size the host sparse solve is faster per graph (256 generated 128-pose graphs,
#: 384 coordinates: 2.7 ms per graph forward, where one dense 384 × 384 factorization per graph
#: and iteration is already ~20 MFlop).
DENSE_MAX = LOOP_N
#: The Schur complement is chosen automatically when the reduced system is at most this big.
SCHUR_REDUCED_MAX = 2000


def auto_linear_solver(structure: G.GraphStructure) -> AbstractStepSolver:
    """The default step solver for a graph structure (the rule, in order):

    1. not on CPU (GPU/TPU): :class:`BlockJacobiPCG` (no host callbacks);
    2. tangent size ``≤ DENSE_MAX`` (128): dense Cholesky (fast, and vmaps well);
    3. a variable type that no factor touches twice, whose tangent block is at least as big as
       all the others together, with the others ``≤ SCHUR_REDUCED_MAX`` (2000) coordinates
       (bundle adjustment: points vs cameras): :class:`SchurComplement` eliminating it;
    4. otherwise :class:`SparseCholesky` (host qdldl/scipy, symbolic analysis once).

    Under ``vmap`` the host sparse solve is one callback per iteration for the whole batch,
    which solves the members in turn; ``linear_solver=BlockJacobiPCG()`` keeps everything on
    the device instead (slower on CPU: see :mod:`jaxnlls.linear._sparse`).
    """
    if jax.default_backend() != "cpu":
        return BlockJacobiPCG()
    layout = structure.layout
    n = layout.n_cols
    if n <= DENSE_MAX:
        return DenseCholesky()
    for e, (off, cnt, d) in enumerate(layout.var_blocks):
        size = cnt * d
        n_red = n - size
        if size < n_red or n_red > SCHUR_REDUCED_MAX or n_red == 0:
            continue
        if any(sum(1 for t, _ in slots if t == e) > 1 for slots in layout.slots):
            continue
        return SchurComplement(structure.var_types[e])
    return SparseCholesky()


def default_solver(structure: G.GraphStructure, linear_solver: Any = "auto") -> AbstractSolver:
    """:class:`GraphLevenbergMarquardt` (GTSAM's damping schedule: ``λ₀ = 1e-5`` absolute,
    ÷10 / ×10) with ``rtol=1e-7``, ``atol=1e-10`` and the given (or automatic) step solver;
    when it has not converged within 25 steps, :meth:`FactorGraph.solve` restarts from the
    initial values with diagonal damping (÷3 / ×3) and keeps the lower cost
    (``restart_after=25``; see :mod:`jaxnlls.graph._restart`). The 15 well-posed shared pose
    graphs converge in 2–10 steps and never restart; ``input_M3500a``, ``input_INTEL_g2o`` and
    ``sphere_bignoise_vertex3`` need it to reach GTSAM's reference optimum.
    With a Schur step (bundle adjustment): diagonal (Marquardt) damping, ``λ₀ = 1e-4``,
    ``rtol=1e-8``, ``atol=1e-12`` and GTSAM's cost-decrease stopping rule
    (``stop_on_small_decrease=True``; 100 times tighter than Ceres's default function
    tolerance). Without priors BA has a 7-dof gauge along which the damped steps keep wandering
    by ~1e-6 at the optimum, and points far from every camera move by 1e5 for a gain of 1e-12
    relative, so the step-length test never fires: a generated 16-camera problem took 200 steps
    to "max_steps reached" at its optimum (6 steps, the same cost to 1e-10, with this rule), BAL
    problem-49-7776 500 steps (94 steps and 13344.2449 with this rule, 13344.2410 after 500;
    reference ≤ 13344.46)."""
    ls = auto_linear_solver(structure) if linear_solver == "auto" else linear_solver
    if isinstance(ls, SchurComplement):
        # bundle adjustment: Marquardt (diagonal) damping, GTSAM's stopping rule
        return GraphLevenbergMarquardt(rtol=1e-8, atol=1e-12, initial_damping=1e-4,
                                       diagonal=True, linear_solver=ls,
                                       stop_on_small_decrease=True)
    return GraphLevenbergMarquardt(rtol=1e-7, atol=1e-10, restart_after=25, linear_solver=ls)


class _GraphFlat(eqx.Module):
    """``flat(x, data, δ) = r(x ⊕ δ)``: what the generic adjoints in ``jaxnlls._adjoint`` use."""

    structure: G.GraphStructure = eqx.field(static=True)

    def __call__(self, x, data, delta):
        return G.residual(self.structure, G.retract(self.structure, x, delta), data)

    def unravel(self, delta):
        out = []
        for off, n, d in self.structure.layout.var_blocks:
            out.append(delta[off : off + n * d].reshape(n, d))
        return tuple(out)


class _AdjointProblem(G._Problem):
    """The graph problem plus ``flat``/``n``, so every adjoint of ``jaxnlls`` applies."""

    @property
    def flat(self):
        return _GraphFlat(self.structure)

    @property
    def n(self) -> int:
        return self.structure.tangent_size


# ----------------------------------------------------------------------- implicit adjoint
def _masked(structure, v):
    m = structure.free_mask
    return v if m is None else v * m.astype(v.dtype)


def _cost_grad(structure, x_star, data):
    """``δ ↦ ∇_δ ½‖r(x* ⊕ δ)‖²`` (anchored coordinates have zero gradient)."""

    def cost(d, dat):
        r = G.residual(structure, G.retract(structure, x_star, d), dat)
        return 0.5 * jnp.sum(r * r)

    return jax.grad(cost)


@eqx.filter_custom_vjp
def _implicit(data, x_star, structure, hessian, damping, step_solver):
    del data, structure, hessian, damping, step_solver
    return x_star


@_implicit.def_fwd
def _implicit_fwd(perturbed, data, x_star, structure, hessian, damping, step_solver):
    del perturbed, structure, hessian, damping, step_solver
    return first_order_only("FactorGraph.solve with ImplicitAdjoint", x_star, data), None


@_implicit.def_bwd
def _implicit_bwd(residuals, cot_x, perturbed, data, x_star, structure, hessian, damping,
                  step_solver):
    del residuals, perturbed
    n = structure.tangent_size
    dtype = G._dtype_of(x_star)
    d0 = jnp.zeros(n, dtype)
    cot_x = jax.tree.map(lambda c, x: jnp.zeros_like(x) if c is None else c, cot_x, x_star,
                         is_leaf=lambda c: c is None)
    _, pull = jax.vjp(lambda d: G.retract(structure, x_star, d), d0)
    dbar = _masked(structure, pull(cot_x)[0])
    lin = G.linearize(structure, x_star, data)
    mu = jnp.full((n,), damping, dtype)

    def precond(v):
        return step_solver.solve(lin, mu, v)[0]

    if hessian == "gauss_newton":
        u = precond(dbar)
        # J u from the linearization already at hand (the anchor's identity rows come last);
        # a JVP of the residual through the retraction cost as much as the rest of this pass
        n_anchor = 0 if structure.anchor is None else len(structure.anchor_cols)
        Ju = lin.mv(u)[: lin.residual.shape[0] - n_anchor]
        _, vjp = eqx.filter_vjp(lambda dat: G.residual(structure, x_star, dat), data)
        return vjp(-Ju)[0]
    gfn = _cost_grad(structure, x_star, data)
    if isinstance(step_solver, SparseCholesky):
        u = _exact_sparse_solve(structure, x_star, data, damping, step_solver, dbar, precond)
        _, vjp = eqx.filter_vjp(lambda dat: gfn(d0, dat), data)
        return vjp(-u)[0]
    free = structure.free_mask

    def matvec(v):
        hv = jax.jvp(lambda d: gfn(d, data), (d0,), (v,))[1]
        if free is not None:
            f = free.astype(dtype)
            hv = f * hv + (1 - f) * v
        return hv + damping * v

    rtol = 1e-11 if dtype == jnp.float64 else 1e-5
    u, _ = pcg(matvec, dbar, precond, rtol, 0.0, 100)
    _, vjp = eqx.filter_vjp(lambda dat: gfn(d0, dat), data)
    return vjp(-u)[0]


def _exact_sparse_solve(structure, x_star, data, damping, step_solver, dbar, precond):
    """``(H + μI)⁻¹ δ̄`` with the exact Hessian ``H`` assembled from per-factor cost Hessians
    in the normal equations' sparsity pattern and solved by the same host factorization, in one
    round (the CG on Hessian-vector products preconditioned by ``JᵀJ`` took about 8 on the
    256 × 128 batched graphs, each a host solve and a forward-over-reverse pass). ``H`` is
    positive semi-definite at a minimum; elsewhere qdldl's LDLᵀ still solves a nonsingular
    ``H``. Where the solve fails (singular ``H``), the Gauss-Newton solve is used instead."""
    n = structure.tangent_size
    dtype = G._dtype_of(x_star)
    data_h = G.cost_hessian_csc_data(structure, x_star, data, jnp.full((n,), damping, dtype))
    u = sparse_solve(structure.layout, data_h, dbar, step_solver.backend)
    ok = jnp.all(jnp.isfinite(u))
    return jax.lax.cond(ok, lambda: u, lambda: precond(dbar))


# ----------------------------------------------------------------------- the solve
@entry_jit
def _solve_graph(graph, init, data, solver, adjoint, max_steps, throw):
    from .._adjoint import AbstractAdjoint, ImplicitAdjoint

    structure = graph.structure
    x0 = G.values_to_tuple(structure, init)

    def make_problem(dat):
        return _AdjointProblem(structure, dat)

    # one scan of the inputs, per leaf, so that an error can name the factor and argument
    finite_flags, input_names = _finite_inputs(structure, x0, data)
    inputs_finite = jnp.all(jnp.stack(finite_flags)) if finite_flags else jnp.asarray(True)
    if adjoint is None or isinstance(adjoint, ImplicitAdjoint):
        hessian = "exact" if adjoint is None else adjoint.hessian
        damping = 0.0 if adjoint is None else adjoint.damping
        from ._restart import run_with_restart

        problem = make_problem(stop_gradient_arrays(data))
        state = stop_gradient_arrays(
            run_with_restart(problem, stop_gradient_arrays(x0), solver, max_steps, inputs_finite)
        )
        value = _implicit(data, state.x, structure, hessian, damping, solver.linear_solver)
        envelope = True
    elif isinstance(adjoint, AbstractAdjoint):
        value, state = adjoint.apply(make_problem, x0, data, solver, max_steps, inputs_finite)
        envelope = adjoint.envelope
    else:
        raise TypeError(f"FactorGraph.solve: adjoint must be a jaxnlls adjoint, got {adjoint!r}")
    x_for_cost = stop_gradient_arrays(value) if envelope else value
    r = G.residual(structure, x_for_cost, data)
    final_cost = 0.5 * jnp.sum(r * r)
    result = state.result
    rank_deficient = jnp.asarray(False)
    if isinstance(solver.linear_solver, DenseCholesky):
        # as in jaxnlls.solve: the dense JᵀJ is at hand (small graphs), so a gauge freedom or
        # an unobserved variable is reported instead of a damped "success" whose implicit
        # gradient would solve a singular system. Sparse graphs are not checked (it would
        # take a rank-revealing factorization; bundle adjustment relies on damping there).
        lin = jax.lax.stop_gradient(state.lin)
        rank_deficient = is_rank_deficient(lin.gram(), diag=lin.gram_diag())
        result = jnp.where(rank_deficient & (result == RESULTS.successful), RESULTS.singular,
                           result).astype(jnp.int32)
    stats = Stats(
        steps=state.steps,
        initial_cost=state.initial_cost,
        final_cost=final_cost,
        grad_norm=jnp.sqrt(jnp.sum(state.grad * state.grad)),
        accepted_steps=state.accepted,
        rank_deficient=rank_deficient,
    )
    if throw:
        # name the non-finite input first: the generic message cannot say which factor it was
        if finite_flags:
            value = eqx.branched_error_if(
                value, result == RESULTS.nonfinite_input, jnp.argmin(jnp.stack(finite_flags)),
                [f"non-finite (NaN or inf) value in {n}" for n in input_names])
        value = eqx.branched_error_if(
            value, result != RESULTS.successful, result, RESULTS.all_messages()
        )
    return Solution(value=G.tuple_to_values(structure, init, value), result=result, stats=stats,
                    aux=None)


def _finite_inputs(structure, x0, data) -> tuple[list, list[str]]:
    """Per float input leaf, whether it is finite, and a name for it: ``init`` by variable type,
    factor data by group and argument (the residual function's parameter name)."""
    flags, names = [], []
    for t, v in zip(structure.var_types, x0):
        for leaf in jax.tree.leaves(v):
            if is_float_array(leaf):
                flags.append(jnp.all(jnp.isfinite(leaf)))
                names.append(f"init (the {t.__name__} variables)")
    for group, dat in zip(structure.groups, data):
        try:
            params = list(inspect.signature(group.kind.residual_fn).parameters)[1:]
        except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
            params = []
        for path, leaf in jax.tree_util.tree_flatten_with_path(dat)[0]:
            if not is_float_array(leaf):
                continue
            keys = [getattr(k, "idx", getattr(k, "key", None)) for k in path]
            if len(keys) >= 2 and keys[0] == 0 and isinstance(keys[1], int) \
                    and keys[1] < len(params):
                what = f"argument {params[keys[1]]!r}"
            elif keys and keys[0] == 1:
                what = "its robust loss"
            else:
                what = f"data {jax.tree_util.keystr(path)}"
            flags.append(jnp.all(jnp.isfinite(leaf)))
            names.append(f"the data of factor {group.name}: {what}")
    return flags, names


class FactorGraph(eqx.Module):
    """A factor graph: static :class:`GraphStructure` plus the stacked factor data (traced).

    Build once with :meth:`FactorGraph.build` (host, outside ``jit``); then :meth:`solve`,
    :meth:`residual`, :meth:`linearize`, :meth:`marginal_covariance` are pure JAX and can be
    jitted, vmapped (over ``init`` and ``data``; the structure is shared, one compile) and
    differentiated (w.r.t. ``data``: measurements, information matrices, robust-loss scales).

    Attributes:
        structure: the static :class:`GraphStructure` (hashable; equal for equal structures).
        data: per factor group ``(args_data, loss)``: ``args_data`` is the group's args pytree
            with every ``Var`` replaced by ``None`` and every data leaf stacked over the group's
            factors (in the order they were given), ``loss`` the group's robust loss or None.
            Groups are ordered by factor name (``graph.group_names``).

    Example:
        >>> class Pose(Var, group=SE2): ...
        >>> graph = FactorGraph.build([prior(Pose(0), SE2.identity(), L0),
        ...                            between(Pose(ia), Pose(ib), z, L)])
        >>> sol = graph.solve(VarValues.make({Pose(np.arange(n)): init_poses}))
        >>> poses = sol.value.get(Pose)
    """

    structure: G.GraphStructure = eqx.field(static=True)
    data: tuple

    @classmethod
    def build(cls, factors: Iterable[Factor], *, gauge: Any = "auto") -> FactorGraph:
        """Group, stack and index factors (host-side; call outside ``jit``).

        Factors are grouped by (factor type, argument structure, variable types, trailing data
        shapes, robust loss), each group stacked so that it is evaluated by one ``vmap``.
        Groups are ordered by factor name and variable types by class name, so equal inputs
        give equal structures (and no recompiles). The Jacobian column indices and the sparse
        ``JᵀJ`` pattern are computed here once.

        Args:
            factors: :class:`Factor` s (single or batched).
            gauge: ``"auto"`` (default): when no factor is unary (no prior at all), the
                variable with the lowest id of the first Lie-group ``Var`` type (by name) is
                held fixed at its initial value — the usual "prior on the first pose" of pose
                graph optimization, without changing the cost. ``None``: no gauge fixing
                (rely on damping). A single ``Var`` (``Pose(0)``): hold that one fixed.

        Returns:
            The :class:`FactorGraph`.

        Raises:
            TypeError / ValueError: on inconsistent factors (message names the factor).
        """
        structure, data = G.build_structure(factors, gauge=gauge)
        return cls(structure, data)

    # -- introspection ----------------------------------------------------------------
    @property
    def group_names(self) -> tuple[str, ...]:
        return tuple(g.name for g in self.structure.groups)

    @property
    def tangent_size(self) -> int:
        return self.structure.tangent_size

    def group_index(self, kind: Any) -> int:
        """Index into :attr:`data` of the (single) group made by factor type ``kind``."""
        hits = [i for i, g in enumerate(self.structure.groups) if g.kind is kind]
        if len(hits) != 1:
            raise KeyError(f"{kind!r} makes {len(hits)} factor groups in this graph, expected 1")
        return hits[0]

    def with_data(self, data: Any) -> FactorGraph:
        """The same structure with other factor data (e.g. learned measurements)."""
        return FactorGraph(self.structure, data)

    def initial_values(self, dtype=None) -> VarValues:
        """Identity / zero values for every variable of the graph."""
        items = {}
        for t, ids in zip(self.structure.var_types, self.structure.var_ids):
            items[t(ids.array)] = t.default_value((len(ids),), dtype)
        return VarValues.make(items)

    # -- evaluation --------------------------------------------------------------------
    def residual(self, values: VarValues, data: Any = None) -> jax.Array:
        """The flat whitened residual (groups in ``group_names`` order)."""
        data = self.data if data is None else data
        return G.residual(self.structure, G.values_to_tuple(self.structure, values), data)

    def cost(self, values: VarValues, data: Any = None) -> jax.Array:
        """``½‖r‖²``."""
        r = self.residual(values, data)
        return 0.5 * jnp.sum(r * r)

    def linearize(self, values: VarValues, data: Any = None) -> BlockSparseLinearization:
        """Residual and :class:`~jaxnlls.linear.BlockSparseJacobian` in the tangent chart
        (plus a zero-residual identity block on the gauge-fixed variable, if any)."""
        data = self.data if data is None else data
        return G.linearize(self.structure, G.values_to_tuple(self.structure, values), data)

    def retract(self, values: VarValues, delta: jax.Array) -> VarValues:
        """``values ⊕ δ`` for a flat tangent ``δ`` in the graph's column order."""
        x = G.values_to_tuple(self.structure, values)
        return G.tuple_to_values(self.structure, values, G.retract(self.structure, x, delta))

    # -- solve ---------------------------------------------------------------------------
    def solve(
        self,
        init: VarValues,
        data: Any = None,
        *,
        solver: AbstractSolver | None = None,
        linear_solver: Any = "auto",
        adjoint: Any = None,
        max_steps: int = 100,
        throw: bool = True,
    ) -> Solution:
        """Minimize ``½‖r‖²`` over the graph's variables, starting from ``init``.

        Args:
            init: initial :class:`VarValues` (must contain every variable of the graph; extra
                variables are passed through unchanged).
            data: factor data to use instead of ``self.data`` (same structure; differentiate
                or vmap through it).
            solver: a jaxnlls solver. Default (:func:`default_solver`):
                :class:`GraphLevenbergMarquardt` (absolute damping ``1e-5``, ÷10 on success,
                ×10 on failure, as GTSAM), ``rtol=1e-7``, ``atol=1e-10``, with the linear
                solver below. A given solver keeps its own ``linear_solver``.
            linear_solver: step solver when ``solver`` is None: ``"auto"`` (see
                :func:`auto_linear_solver`), or ``DenseCholesky()``, ``SparseCholesky()``,
                ``BlockJacobiPCG()``, ``SchurComplement(Point)``.
            adjoint: ``None`` / ``ImplicitAdjoint(hessian="exact")`` (default): implicit
                differentiation at the solution. With :class:`SparseCholesky` the exact Hessian
                is assembled from per-factor cost Hessians and solved once by the same host
                factorization; with other step solvers, CG on exact Hessian-vector products
                preconditioned by the solver's own dense/Schur/PCG solve of ``JᵀJ + μI``;
                ``ImplicitAdjoint(hessian="gauss_newton")``: one solve with ``JᵀJ``;
                ``UnrollAdjoint()``, ``TruncatedAdjoint(k)``, ``OneStepAdjoint()``,
                ``DirectLossAdjoint(eps)`` as in :func:`jaxnlls.solve`.
            max_steps: iteration cap.
            throw: raise on failure (use ``throw=False`` under ``vmap`` and read ``result``).

        Returns:
            A :class:`jaxnlls.Solution` whose ``value`` is a :class:`VarValues`. With the dense
            step solver (graphs of at most 128 unknowns by default), a ``JᵀJ`` that is singular
            at the solution (``gauge=None`` without a prior, an unobserved variable) gives
            ``RESULTS.singular`` and ``stats.rank_deficient``, as in :func:`jaxnlls.solve`.
            Sparse step solvers do not test the rank (``stats.rank_deficient`` is False):
            there damping carries a gauge freedom, as bundle adjustment relies on.

        Differentiability:
            Gradients flow to ``data`` (every float leaf: measurements, square-root
            information matrices, robust-loss scales) by the chosen adjoint; the implicit
            adjoint gives zero gradient w.r.t. ``init``. Implicit gradients are valid at a
            converged stationary point (check ``sol.result``); the gauge-fixed variable is
            held constant.
        """
        data = self.data if data is None else data
        if solver is None:
            solver = default_solver(self.structure, linear_solver)
        return _solve_graph(self, init, data, solver, adjoint, max_steps, throw)

    # -- covariances ---------------------------------------------------------------------
    def marginal_covariance(
        self,
        values: VarValues,
        var: Var,
        data: Any = None,
        *,
        linear_solver: Any = "auto",
    ) -> jax.Array:
        """Marginal covariance blocks ``[(JᵀJ)⁻¹]_{vv}`` of ``var`` at ``values`` (GTSAM's
        ``Marginals``: Gauss-Newton information, tangent-space covariance, right-perturbation
        convention, tangent order of the group).

        Solves ``JᵀJ X = E`` for the ``d`` unit columns of each requested variable with the
        graph's factorization (sparse Cholesky, dense, Schur or PCG). The gauge-fixed variable
        has zero covariance. The information must be positive definite (a prior or the gauge).

        Args:
            values: the linearization point (usually ``sol.value``).
            var: a ``Var`` with one id (returns ``(d, d)``) or an id array (``(k, d, d)``).
            data, linear_solver: as in :meth:`solve`.
        """
        data = self.data if data is None else data
        ls = auto_linear_solver(self.structure) if linear_solver == "auto" else linear_solver
        cols = self.structure.columns_of(var)
        # static key: the shape too, so an empty id array keeps its (0, d, d) result shape
        key = (cols.shape, tuple(cols.reshape(-1).tolist()))
        return _marginals(self, values, data, ls, key)


@entry_jit
def _marginals(graph, values, data, ls, key):
    cols = np.asarray(key[1], np.int64).reshape(key[0])
    structure = graph.structure
    lin = G.linearize(structure, G.values_to_tuple(structure, values), data)
    n = structure.tangent_size
    dtype = lin.residual.dtype
    flat_cols = np.asarray(cols).reshape(-1)
    E = jnp.zeros((len(flat_cols), n), dtype).at[np.arange(len(flat_cols)), flat_cols].set(1.0)
    zeros = jnp.zeros(n, dtype)
    X, ok = jax.vmap(lambda e: ls.solve(lin, zeros, e))(E)  # (k*d, n)
    # singular JᵀJ (no prior or gauge on some variable): the step solvers return a finite
    # fallback, and qdldl and PCG may even report success, so also check that JᵀJ X = E holds;
    # the dense solve's pivot test catches what that check misses in float32 (a free chain of
    # 150 poses: its basic solution's residual fell below the threshold)
    resid = jax.vmap(lambda x: lin.rmv(lin.mv(x)))(X) - E
    bad = ~(jnp.max(jnp.abs(resid), initial=0.0) <= jnp.finfo(dtype).eps ** 0.25)
    X = eqx.error_if(
        X, bad | ~jnp.all(ok), "marginal_covariance: JᵀJ is singular (a variable without a "
        "prior or gauge), too ill-conditioned for the working precision (in float32: use "
        "float64), or non-finite at `values`, so the covariance is not defined"
    )
    cov_cols = X[:, flat_cols]  # (k*d, k*d)
    if structure.free_mask is not None:
        f = jnp.asarray(structure.free_mask[flat_cols], dtype)
        cov_cols = cov_cols * f[:, None] * f[None, :]
    d = np.asarray(cols).shape[-1]
    if np.asarray(cols).ndim == 1:
        return cov_cols
    k = np.asarray(cols).shape[0]
    blocks = cov_cols.reshape(k, d, k, d)
    return blocks[np.arange(k), :, np.arange(k), :]
