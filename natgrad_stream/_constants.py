"""Numerical thresholds and defaults, in one place."""

#: Relative damping ε: the whitener factors ``Ĝ + ε·(tr Ĝ / P)·I`` of the Jacobi-scaled
#: metric ``Ĝ = D^-½ G D^-½`` (whose trace/P is 1), i.e. ``G + ε·diag(G)`` in θ.
DEFAULT_DAMPING = 1e-9
#: Eigenvalues of the damped, scaled metric below ``floor × largest`` are raised to it.
DEFAULT_EIGEN_FLOOR = 1e-10
#: A parameter whose metric diagonal is zero, or after an exact elimination step (an
#: intercept) at most this fraction of *its own* diagonal before the step (a feature constant
#: on the data), is treated as zero: it is Jacobi-scaled by its own diagonal before the
#: step (an exact zero, which has no scale of its own, by this fraction of the largest).
#: Never compared across parameters, so one feature at 1e18 cannot zero the others.
ZERO_DIAGONAL_FRACTION = 1e-14
#: Eigenvalues of the scaled metric below this fraction of the largest are zero to round-off
#: (eigh's error is about P·2e-16 of the largest: 1e-12 at P = 5,000): directions no row has
#: moved, given the mean eigenvalue as a prior (see ``whitening._unidentified_to_prior``).
#: Ten times below DEFAULT_EIGEN_FLOOR, so directions the data do identify, however soft,
#: keep the floor.
NULL_EIGENVALUE_FRACTION = 1e-11
#: From this many parameters on, a GLM's parallel full-metric pass splits the metric's rows
#: over threads (one shared P × P accumulator) instead of the batch's rows (one per thread):
#: at P = 3,001 the per-thread copies were 2 × 69 MiB of a wide fit's peak memory. It adds
#: a barrier per 64 rows, which costs time on a busy machine at smaller P (at P = 1,201
#: with 9 processes on 2 cores: 2.5× the row split's time; at 3,001 the same time).
WIDE_METRIC_PARAMS = 2048
#: ``--structure auto``: the full metric up to this many parameters, the diagonal beyond
#: (:func:`natgrad_stream.training.options.auto_structure`).
AUTO_FULL_MAX_PARAMS = 2048
#: ... and up to this many on dense data of at least AUTO_FULL_MIN_ROWS_PER_PARAM rows per
#: parameter, for a model whose full metric is the Hessian (Fisher scoring then converges
#: in a handful of passes: the GLMs, softmax, the Gaussians). Measured on ``make-data
#: --task logistic`` 100,000 × 3,000 (P = 3,001, 33 rows per parameter; 2 cores at load
#: 8–9): with the full metric one pass ends 1.35% above the optimum (the diagonal's: 50%)
#: and the default fit reaches it in 5 passes, 1,057 s (the diagonal's Newton–CG passes
#: were 5e-3 above after 1,903 s); peak RSS 1.50 GB (the diagonal's 0.84 GB one pass,
#: 1.29 GB default). At 4,096 a metric takes 134 MB and its eigendecomposition ~10 s.
AUTO_FULL_HESSIAN_MAX_PARAMS = 4096
#: Rows per parameter from which a pass's metric accumulation (n·P²/2 multiply-adds, at
#: least 10·P³) outweighs the O(P³) refreshes the full metric adds. Below it the refreshes
#: dominate: sparse 8,000 × 3,000 (2.7 rows per parameter) took 145 s with the full
#: metric against 0.5 s with the diagonal, to the same optimum; and on sparse rows (each
#: touching a few columns) the diagonal is close to the full metric anyway, so sparse data
#: keep the diagonal beyond AUTO_FULL_MAX_PARAMS whatever their rows.
AUTO_FULL_MIN_ROWS_PER_PARAM = 20
#: At most this many parameters are named as moved by unidentified directions.
UNIDENTIFIED_NAMED = 10
#: ``--rank``: columns of the low-rank structure's sketch (``--structure lowrank``), which
#: ``--structure auto`` takes where it would take the diagonal on dense data for the GLMs
#: and softmax. Measured on ``make-data --task logistic`` (raw, offset, correlated
#: features), one pass (2 cores, load 9–15): 50,000 × 10,000 loss 0.4480 against the
#: diagonal's 0.6798 (47 s against 17 s, peak RSS 891 against 779 MB; the lowest loss
#: measured there 0.3577, so at least 25% and 90% above the optimum);
#: 100,000 × 3,000 4.6% above the optimum against 50% (57 s against 71 s; the full
#: metric, which auto keeps there, 1.35% in 714 s; rank 16 5.4%, rank 128 4.4%);
#: 3,000 × 1,000 with ``l2=1e-3`` (3 rows per parameter) 50% against 92%, and the default
#: fit at the optimum in 12 passes, 90 s, against 14 and 134 s.
DEFAULT_LOWRANK_RANK = 64
#: Columns of the whole-data sketch a later pass of the low-rank structure takes, as a
#: multiple of ``--rank`` (at most P): the sketch preconditions Newton–CG, whose products
#: are passes over the data, and its rank is what sets their number (d = 1,000 × 5,000
#: rows, exact Hessian at the optimum: condition of the preconditioned system 6.2e4 with
#: rank 64, 7.4e3 with 256; a fit in memory 1,121 against 403 passes; at d = 10,000 the
#: rank-64 fit spent 100 products a pass 9e-5 above the optimum). Its cost, a block
#: product of ``REFINE_RANK_FACTOR·rank`` columns a batch sharing the pass's read, is
#: a few passes' worth of products.
REFINE_RANK_FACTOR = 4
#: Negative diagonal entries down to this fraction of the parameter's own diagonal before an
#: elimination step are round-off (e.g. on a rank-deficient batch metric) and read as 0; an
#: input diagonal that is itself negative has no scale of its own and is judged against the
#: largest.
NEGATIVE_DIAGONAL_TOLERANCE = 1e-12

#: Adaptive EMA: half-life of the running metric is max(MIN_PER_PARAM · P, FRACTION · t)
#: samples, so the estimate follows θ early and averages over more data later.
HALF_LIFE_MIN_PER_PARAM = 20
HALF_LIFE_FRACTION = 0.25

#: Drift trigger: refresh when the rms eigenvalue deviation of W⁻ᵀ G W⁻¹ from I exceeds this.
DEFAULT_DRIFT_THRESHOLD = 0.1
#: Probe vectors used to estimate the drift (Hutchinson estimator of ‖W⁻ᵀGW⁻¹ − I‖_F).
DEFAULT_DRIFT_PROBES = 4
#: Drift is estimated every this many batches.
DEFAULT_DRIFT_CHECK_BATCHES = 8

DEFAULT_BATCH_SIZE = 1024

#: ``fisher_every="auto"`` accumulates the metric on one batch in round(P / this). Measured on
#: 1M × 100 logistic (P = 101), held-out gap after one pass vs rows/s: every 3rd batch
#: −0.0002% at 2.19M, every 6th +0.0006% at 2.74M, every 12th +0.0016% (target: 0.1%).
FISHER_EVERY_PARAMS = 16
#: Every batch folds into the running metric until it holds this many rows per parameter
#: (then one in ``fisher_every``), so a wide model's whitener rests on all the rows it has
#: seen, not on one batch in round(P/16). The rows are counted as the running metric decays
#: them, so with the auto half-life (at least 20·P samples) every batch folds for about the
#: first 110 rows per parameter of a stream. One default pass, gap to the optimum (make-data
#: logistic, raw features): 100,000 × 3,000 (33 rows per parameter) 1.35% → 0.44%; 33,000 ×
#: 1,000 0.70% → 0.39%; 10,000 × 300 1.07% → 0.82% (4 → 32). Earlier, 200k × 1000 with 0
#: (none) 0.72%, 2 0.45%, 4 0.24%, 8 0.14%. The cost is a rank-1,024 update of the P × P
#: metric a batch (about P²/2 multiply-adds a row) where the refreshes cost O(P³) anyway.
METRIC_WARMUP_ROWS_PER_PARAM = 32.0

#: Power iterations estimating the top eigenvalue of a diagonal whitener's residual metric.
CURVATURE_POWER_ITERATIONS = 12

#: Targets sampled per row for the Monte Carlo model Fisher (``metric="monte-carlo"``).
DEFAULT_MC_SAMPLES = 1

#: L-BFGS in the natural space (:mod:`natgrad_stream.lbfgs`): default rounds (re-whitenings).
LBFGS_ROUNDS = 10
#: Passes at most of a fit left without ``epochs``: it runs until its later passes' rule
#: holds (Fisher scoring: a handful of passes, quadratic convergence; the L-BFGS hand-over
#: of ICA, Ising and the network: tens), capped here.
AUTO_MAX_EPOCHS = 50
#: Default L-BFGS iterations per round.
LBFGS_ITERS = 25
#: Default relative-improvement tolerance of a round.
LBFGS_TOL = 1e-12
#: Default tolerance on ``max |∇φJ|`` (a natural-gradient norm).
LBFGS_GTOL = 1e-7
#: Default number of (s, y) correction pairs kept by L-BFGS.
LBFGS_MEMORY = 10
#: Default rows per evaluation batch: a batch method gains nothing from small batches.
LBFGS_EVAL_BATCH_ROWS = 65536
#: A trial point where ``J`` or ``∇J`` is not finite is reported as a quadratic rising
#: from the best point by this many times ``max(1, |J_best|)``: finite values the line
#: search can interpolate, so it backs off (SciPy's L-BFGS-B takes ``inf``, and also huge
#: values, for convergence).
NONFINITE_RISE = 1.0

#: Rows per chunk written by ``make-data`` and assumed for in-memory arrays, for data narrow
#: enough that this many rows of features fit DEFAULT_CHUNK_BYTES; rows per evaluation
#: batch of ``evaluate``; samples between progress records of the metrics log.
DEFAULT_CHUNK_ROWS = 65536
#: Bytes of features (rows × features × itemsize of the features' dtype, as read) that one
#: chunk of the default chunking holds at most: ``make-data`` / ``make_dataset`` and
#: in-memory arrays use DEFAULT_CHUNK_ROWS rows where they fit (float32 up to 240
#: features, float64 up to 120: such data are chunked, and make-data's values drawn,
#: exactly as before), else the most rows in a multiple of CHUNK_ROWS_MULTIPLE that fit
#: (at least CHUNK_ROWS_MULTIPLE). 60 MiB is the default read budget over the 8 chunks of
#: the default plan (4 buffers of 2 chunks), less room for each row's index and target
#: (16 bytes), the staging buffers and the batch buffer: with float32 features (float64:
#: half the counts) the default plan fits DEFAULT_READ_BUFFER_BYTES at every width up to
#: 14,559 features (beyond, 1,024-row chunks and the batch buffer outgrow it and prefetch
#: is lowered, the order unchanged), the smallest plan up to 32,764; wider still, rows are
#: too wide for any chunking of 1,024 rows (``tests/test_chunk_bytes.py``).
DEFAULT_CHUNK_BYTES = 60 << 20
#: Rows of a chunk shortened for DEFAULT_CHUNK_BYTES are a multiple of this (the default
#: batch), and at least this many.
CHUNK_ROWS_MULTIPLE = 1024
EVAL_BATCH_ROWS = 65536
DEFAULT_LOG_EVERY = 65536
#: Checkpoints kept in a run directory (the newest and the one before it).
DEFAULT_KEEP_CHECKPOINTS = 2
#: Follow mode: seconds between looks for newly committed rows.
DEFAULT_POLL_SECONDS = 1.0
#: Seconds between progress lines when stderr is not a terminal.
DEFAULT_PROGRESS_SECONDS = 10.0

#: The paper's worked example (section 3): the mixing matrix A of ``x = A θ + noise``,
#: used by the ``gaussian-mean`` data task and model.
PAPER_MIXING = ((3.0, 1.0 / 3.0), (1.0 / 3.0, 0.0))

#: Stream ids of the random generators ``default_rng([seed, ..., id])``: each consumer of
#: randomness draws from its own stream, so adding one never shifts another.
RNG_CHUNK_ORDER = 0      # data: chunk order of an epoch, [seed, epoch, id]
RNG_ROW_ORDER = 1        # data: rows within a read, [seed, epoch, id, read]
RNG_LBFGS_WINDOW = 5     # L-BFGS: chunks of a round's window, [seed, round, id]
RNG_LEARNER = 7          # learner: probes, Monte Carlo targets; [seed, id] or [seed, round, id]
#: Synthetic data: the feature model ([seed, id]) and the true parameters of the built-in
#: tasks ([seed, id]); each task module of ``data/synthetic`` draws its true model from
#: ``[seed, RNG_TASK_TRUTH[task]]`` (values kept as first released, so datasets repeat).
RNG_FEATURE_MODEL = 99
RNG_TRUE_PARAMS = 98
RNG_TASK_TRUTH = {"poisson": 96, "softmax": 97, "mlp": 97, "ising": 97, "gaussian": 211,
                  "ica": 307}
#: Models: the network's random initial weights, [model seed, id].
RNG_MLP_INIT = 11

#: Divergence guard of the streaming learner: every this many batches, the mean loss of
#: the window is compared with the loss at the run's starting parameters; a rise of more
#: than DIVERGENCE_FACTOR × |that loss| rolls the learner back to the end of the last good
#: window and multiplies its steps by DIVERGENCE_STEP_CUT; after DIVERGENCE_MAX_ROLLBACKS
#: such cuts (or at the end of the data) the fit stops (NumericalError: exit 1).
DIVERGENCE_WINDOW_BATCHES = 8
DIVERGENCE_FACTOR = 10.0
DIVERGENCE_STEP_CUT = 0.1
DIVERGENCE_MAX_ROLLBACKS = 3
#: Drift alarm (``forget``): a guard window whose mean loss exceeds the running level (the
#: earlier windows' mean, forgotten with the data's half-life) by more than
#: DRIFT_ALARM_SIGMAS standard deviations of the windows' means and by more than
#: DRIFT_ALARM_MIN_RISE × |level| logs one warning, once the level holds
#: DRIFT_ALARM_MIN_WINDOWS windows; it clears when a window is back under the threshold.
DRIFT_ALARM_SIGMAS = 4.0
DRIFT_ALARM_MIN_RISE = 0.05
DRIFT_ALARM_MIN_WINDOWS = 4
#: The divergence guard under forgetting: windows above its threshold (a drift raises the
#: loss at once) roll back only when they last longer than this many half-lives of
#: forgetting, after which an adapting model weighs the rows before the drift 1/8.
DRIFT_SETTLE_HALF_LIVES = 3.0

#: Passes after the first (``refine="scoring"``): rows per evaluation batch, the Armijo
#: constant of the backtracking on the pass loss, and the halvings before giving up.
REFINE_BATCH_ROWS = 65536
REFINE_ARMIJO = 1e-4
REFINE_MAX_HALVINGS = 30
#: Round-off of a pass loss, relative to |J|: the Armijo test allows it, and a Newton
#: decrement below it means nothing is left to gain (the passes stop, converged).
REFINE_ROUNDOFF = 1e-14
#: ``refine="newton-cg"`` left without ``tol`` stops once the Newton decrement (the
#: estimated suboptimality) is at most this × |J|: on the flights one-hot set (λ = 1e-5),
#: with the superlinear forcing term then used, 1e-10 took 9 Newton steps and 446
#: metric-vector passes and round-off 12 and 746 (each further factor of about 30, 100).
NEWTON_CG_TOL = 1e-10
#: A rejected step is shortened by quadratic interpolation of J along it, to between these
#: fractions of its length.
REFINE_SHRINK = (0.1, 0.5)
#: Unbounded coefficients (Fisher scoring without a penalty): this many accepted passes in a
#: row whose Newton step lengthens θ while the decrement stays above UNBOUNDED_DECREMENT·|J|
#: (Newton's quadratic convergence would have shrunk it) stop the fit as separable or
#: unidentified data (on separable data the decrement stays a fixed fraction of J, about
#: 0.4, as J and the gradient vanish together along the separating direction).
UNBOUNDED_PASSES = 8
UNBOUNDED_DECREMENT = 0.05

#: Bytes a stream's read buffers may take by default (``read_buffer_bytes``): the pooled
#: read buffers, their staging buffers and the batch buffer of one stream, whatever the
#: number of features (prefetch, then chunks per read, are lowered to fit; whole chunks
#: always, see :mod:`natgrad_stream.data.budget`). 512 MiB keeps the row-sized plan of
#: earlier releases (4 buffers of 2 chunks of 65,536 rows) unchanged up to about 250
#: float32 features, and its read order up to about 330.
DEFAULT_READ_BUFFER_BYTES = 512 << 20

#: A model without CSR kernels densifies a sparse batch up to this many bytes (its dense
#: rows); a larger batch is refused with the figures (use a GLM or a smaller batch).
SPARSE_DENSIFY_MAX_BYTES = 256 << 20
