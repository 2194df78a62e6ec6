using System.Collections.Immutable;
using Treaty.Core.Engine;
using Treaty.Core.Model;

namespace Treaty.Core.Protocols;

/// <summary>
/// How an operation may end. The shared lifecycle asks the machine for it when an answer comes
/// back, and acts on it the same way for every protocol.
/// </summary>
public enum Obligation
{
    /// <summary>
    /// A definitive failure (4xx) ends it as <see cref="OpStatus.Failed"/>: nothing was applied.
    /// Running out of attempts while the outcome is unknown ends it as
    /// <see cref="OpStatus.Exhausted"/>: it may have been applied. Saga actions before the pivot,
    /// TCC's try, 2PC's prepare, 3PC's canCommit and preCommit.
    /// </summary>
    Tentative,

    /// <summary>
    /// A definitive failure ends it as <see cref="OpStatus.Failed"/>, but an unknown outcome is
    /// retried forever (the transaction is stuck after the budget): it decides the outcome, so it
    /// can never be abandoned. The saga's pivot, the two-phase message's queryPrepared.
    /// </summary>
    Decisive,

    /// <summary>
    /// It must succeed: a definitive failure is retried like an unknown outcome, forever (stuck after
    /// the budget). Compensations, confirm/cancel, commit, doCommit/abort, saga steps after the
    /// pivot, message delivery.
    /// </summary>
    Required,
}

/// <summary>Where a round of votes stands (see <see cref="TransactionStep.CollectVotes"/>).</summary>
public enum Tally
{
    /// <summary>Some answers are still missing.</summary>
    Waiting,

    /// <summary>Every branch answered YES.</summary>
    AllYes,

    /// <summary>A branch answered NO (or never answered), or the deadline passed.</summary>
    AnyNo,
}

/// <summary>
/// The working copy of one decision, and the operation lifecycle every protocol shares: attempt
/// numbers and stale answers, retries with backoff and jitter, the budget and the stuck mark,
/// operations lost in flight (a restart, the watchdog), operator retries, and the next wake-up.
/// A <see cref="ProtocolMachine"/> reads and changes the transaction only through it.
/// </summary>
public sealed class TransactionStep
{
    private readonly ProtocolMachine _machine;
    private readonly TransactionState _state;
    private readonly DecisionContext _context;
    private readonly BranchState[] _branches;
    private readonly OpState[] _ops;
    private readonly List<Command> _commands = [];
    private readonly List<JournalEntry> _journal = [];
    private DateTimeOffset? _wake;
    private bool _writeAhead = true;
    private ProtocolPhase _phase;

    internal TransactionStep(ProtocolMachine machine, TransactionState state, DecisionContext context)
    {
        _machine = machine;
        _state = state;
        _context = context;
        _branches = [.. state.Branches];
        _ops = [.. state.Ops];
        Status = state.Status;
        Outcome = state.Outcome;
        Reason = state.Reason;
        _phase = PhaseNamed(state.Phase);
    }

    /// <summary>The state this decision started from.</summary>
    public TransactionState Original => _state;

    public TransactionSpec Spec => _state.Spec;

    public DateTimeOffset Now => _context.Now;

    public TransactionStatus Status { get; private set; }

    /// <summary>The current phase's name.</summary>
    public string Phase => _phase.Name;

    public TransactionOutcome? Outcome { get; private set; }

    public string? Reason { get; private set; }

    public bool IsTerminal => Status.IsTerminal();

    public int BranchCount => _branches.Length;

    public OpState Op(int branch, string op) => _branches[branch].Op(op);

    /// <summary>The transaction-level operation <paramref name="op"/>.</summary>
    public OpState TransactionOp(string op) =>
        Array.Find(_ops, o => o.Op == op) ?? throw new KeyNotFoundException($"The transaction has no operation '{op}'.");

    /// <summary>Never called, or a retry whose time has come.</summary>
    public bool IsDue(OpState op) => op.Status == OpStatus.NotStarted || IsRetryDue(op);

    /// <summary>A retry whose time has come.</summary>
    public bool IsRetryDue(OpState op) => op.Status == OpStatus.Waiting && op.NextAttemptAt <= Now;

    /// <summary>Calls the next attempt of a branch's operation (feeding its outcome back).</summary>
    public void Start(int branch, string op)
    {
        var spec = Spec.Branches[branch];
        var url = spec.UrlOf(op)
            ?? throw new InvalidOperationException($"Branch '{spec.Name}' has no '{op}' URL; validation should have refused it.");
        var next = Started(_branches[branch].Op(op));
        _branches[branch] = _branches[branch].With(next);
        _journal.Add(new(Now, JournalKinds.AttemptStarted, spec.Name, op, next.Attempts));
        _commands.Add(new InvokeOperation(branch, spec.Name, op, url, next.Attempts, CallTimeout(branch)));
    }

    /// <summary>
    /// Records that a never-started branch operation may have been called all the same (see
    /// <see cref="OpState.MaybeCalled"/>), with a journal line saying why.
    /// </summary>
    public void MarkMaybeCalled(int branch, string op, string why)
    {
        var state = _branches[branch].Op(op);
        if (state.Status != OpStatus.NotStarted || state.MaybeCalled)
        {
            return;
        }

        _branches[branch] = _branches[branch].With(state with { MaybeCalled = true });
        _journal.Add(new(Now, JournalKinds.AttemptUnknown, Spec.Branches[branch].Name, op, Detail: why));
    }

    /// <summary>Calls the next attempt of a transaction-level operation.</summary>
    public void StartTransactionOp(string op)
    {
        var url = Spec.UrlOf(op)
            ?? throw new InvalidOperationException($"The transaction has no '{op}' URL; validation should have refused it.");
        var index = Array.FindIndex(_ops, o => o.Op == op);
        var next = Started(_ops[index]);
        _ops[index] = next;
        _journal.Add(new(Now, JournalKinds.AttemptStarted, null, op, next.Attempts));
        _commands.Add(new InvokeOperation(null, null, op, url, next.Attempts, CallTimeout(null)));
    }

    /// <summary>
    /// Sends a branch's operation without waiting for its outcome (the engine retries an unknown
    /// one while it runs); the operation reads <see cref="OpStatus.Sent"/> from now on.
    /// </summary>
    public void Notify(int branch, string op)
    {
        var spec = Spec.Branches[branch];
        var url = spec.UrlOf(op)
            ?? throw new InvalidOperationException($"Branch '{spec.Name}' has no '{op}' URL; validation should have refused it.");
        var current = _branches[branch].Op(op);
        _branches[branch] = _branches[branch].With(current with
        {
            Status = OpStatus.Sent,
            Attempts = current.Attempts + 1,
            NextAttemptAt = null,
            FirstAttemptAt = current.FirstAttemptAt ?? Now,
            LastAttemptAt = Now,
        });
        _journal.Add(new(Now, JournalKinds.Notified, spec.Name, op, current.Attempts + 1));
        _commands.Add(new NotifyOperation(branch, spec.Name, op, url, CallTimeout(branch), PolicyOf(branch)));
    }

    /// <summary>
    /// Drives a voting operation (TCC's try, 2PC's prepare, 3PC's canCommit and preCommit) on every
    /// branch and counts the answers: <see cref="Tally.AnyNo"/> as soon as one failed definitively
    /// or ran out of attempts with its outcome unknown (both are a NO) or the transaction's deadline
    /// passed; <see cref="Tally.AllYes"/> once it succeeded on every branch; otherwise it starts
    /// whatever is due and waits. <paramref name="reason"/> says why the answer is NO.
    /// </summary>
    public Tally CollectVotes(string op, out string reason)
    {
        reason = "";
        var allYes = true;
        for (var i = 0; i < _branches.Length; i++)
        {
            var vote = _branches[i].Op(op);
            if (vote.Status is OpStatus.Failed or OpStatus.Exhausted)
            {
                var how = vote.Status == OpStatus.Failed ? "failed" : "ran out of attempts";
                reason = $"{Spec.Branches[i].Name}.{op} {how}: {vote.LastError}";
                return Tally.AnyNo;
            }

            allYes &= vote.Status == OpStatus.Succeeded;
        }

        if (allYes)
        {
            return Tally.AllYes;
        }

        if (_state.Deadline is { } deadline)
        {
            if (deadline <= Now)
            {
                reason = "transaction timed out";
                return Tally.AnyNo;
            }

            WakeAt(deadline);
        }

        for (var i = 0; i < _branches.Length; i++)
        {
            if (IsDue(_branches[i].Op(op)))
            {
                Start(i, op);
            }
        }

        return Tally.Waiting;
    }

    /// <summary>
    /// Drives <paramref name="op"/> on every branch: starts it wherever it is due (never sent, or a
    /// retry whose time has come). True once it succeeded on every branch.
    /// </summary>
    public bool DriveEveryBranch(string op)
    {
        var done = true;
        for (var i = 0; i < _branches.Length; i++)
        {
            var state = _branches[i].Op(op);
            if (state.Status == OpStatus.Succeeded)
            {
                continue;
            }

            done = false;
            if (IsDue(state))
            {
                Start(i, op);
            }
        }

        return done;
    }

    /// <summary>
    /// Drives <paramref name="undo"/> on every branch where one of <paramref name="forward"/> may
    /// have been applied, once no forward call is still in flight there (its answer says whether
    /// there is anything to undo). A forward op that failed definitively applied nothing, and one
    /// never sent neither. True once nothing is left to undo.
    /// </summary>
    public bool UndoEveryApplied(string undo, params ReadOnlySpan<string> forward)
    {
        var done = true;
        for (var i = 0; i < _branches.Length; i++)
        {
            var inFlight = false;
            var applied = false;
            foreach (var op in forward)
            {
                var state = _branches[i].Op(op);
                inFlight |= state.Status == OpStatus.InFlight;
                applied |= state.MayHaveApplied();
            }

            var undoing = _branches[i].Op(undo);
            if (inFlight)
            {
                done = false;
            }
            else if (applied && undoing.Status != OpStatus.Succeeded)
            {
                done = false;
                if (IsDue(undoing))
                {
                    Start(i, undo);
                }
            }
        }

        return done;
    }

    /// <summary>Moves to another phase of the protocol (journaled).</summary>
    public void EnterPhase(string phase)
    {
        if (phase == _phase.Name)
        {
            return;
        }

        _phase = PhaseNamed(phase);
        _journal.Add(new(Now, JournalKinds.Phase, Detail: phase));
    }

    /// <summary>
    /// Records the coordinator's decision. An abort also moves the transaction to
    /// <see cref="TransactionStatus.Aborting"/> with <paramref name="reason"/>.
    /// </summary>
    public void Decide(TransactionOutcome outcome, string? reason = null)
    {
        Outcome = outcome;
        if (outcome == TransactionOutcome.Abort)
        {
            Status = TransactionStatus.Aborting;
            Reason = reason;
            _journal.Add(new(Now, JournalKinds.Aborting, Detail: reason));
        }
        else
        {
            _journal.Add(new(Now, JournalKinds.Committing, Detail: reason));
        }
    }

    /// <summary>Sets a non-terminal status (use <see cref="Finish"/> to end the transaction).</summary>
    public void SetStatus(TransactionStatus status)
    {
        if (status.IsTerminal())
        {
            throw new ArgumentException("End a transaction with Finish.", nameof(status));
        }

        Status = status;
    }

    /// <summary>Ends the transaction: committed (every effect permanent) or aborted (every effect undone).</summary>
    public void Finish(TransactionStatus terminal)
    {
        if (!terminal.IsTerminal())
        {
            throw new ArgumentException("Finish takes committed or aborted.", nameof(terminal));
        }

        Status = terminal;
        if (terminal == TransactionStatus.Committed)
        {
            Outcome = TransactionOutcome.Commit;
            Reason = null;
            _journal.Add(new(Now, JournalKinds.Committed));
        }
        else
        {
            Outcome = TransactionOutcome.Abort;
            _journal.Add(new(Now, JournalKinds.Aborted, Detail: Reason));
        }

        _commands.Add(new Finish(terminal));
    }

    /// <summary>Asks to be woken at <paramref name="at"/> (a deadline) besides the lifecycle's own wake-ups.</summary>
    public void WakeAt(DateTimeOffset at) => _wake = _wake is { } w && w < at ? w : at;

    /// <summary>Lets this decision's calls leave before it is durable (see <see cref="Decision.WriteAhead"/>).</summary>
    public void ActBeforeDurable() => _writeAhead = false;

    /// <summary>Adds a journal entry.</summary>
    public void Log(string kind, string? branch = null, string? op = null, string? detail = null) =>
        _journal.Add(new(Now, kind, branch, op, Detail: detail));

    /// <summary>Applies the event; false when it changes nothing (a stale or duplicate answer, a refused request).</summary>
    internal bool Apply(TransactionEvent @event)
    {
        if (IsTerminal)
        {
            return false;
        }

        switch (@event)
        {
            case Submitted:
                if (Status != TransactionStatus.Pending)
                {
                    return false;
                }

                _machine.OnSubmitted(this);
                return true;

            case Resumed resumed:
                _journal.Add(new(Now, JournalKinds.Resumed, Detail: resumed.Detail));
                if (Status == TransactionStatus.Pending)
                {
                    Status = TransactionStatus.Running;
                }

                ForEachOp(static (step, branch, op) =>
                {
                    if (op.Status == OpStatus.InFlight)
                    {
                        step.Lost(branch, op, "outcome lost: the coordinator restarted while the call was in flight");
                    }
                });
                _machine.OnResumed(this);
                return true;

            case OperationCompleted completed:
                return ApplyCompleted(completed);

            case TimerFired:
                ForEachOp(static (step, branch, op) =>
                {
                    if (op.Status == OpStatus.InFlight && step.Watchdog(branch, op) <= step.Now)
                    {
                        // The call's answer never came back (it was lost with its task); retrying is
                        // safe because the participant deduplicates on the idempotency key.
                        step.Lost(branch, op, "no answer from the call before its watchdog expired");
                    }
                });
                return true;

            case AdminRetry retry:
                _journal.Add(new(Now, JournalKinds.OperatorRetry, Detail: $"by {retry.Actor}"));
                ForEachOp(static (step, branch, op) =>
                {
                    if (op.Status == OpStatus.Waiting)
                    {
                        step.Replace(branch, op with { BudgetBase = op.Attempts, NextAttemptAt = step.Now });
                    }
                });
                return true;

            case AdminAbort abort:
                if (!_machine.CanAbort(_state))
                {
                    return false;
                }

                var why = $"aborted by operator {abort.Actor}" + (string.IsNullOrEmpty(abort.Reason) ? "" : $": {abort.Reason}");
                _journal.Add(new(Now, JournalKinds.OperatorAbort, Detail: why));
                _machine.OnAbortRequested(this, why);
                return true;

            case SenderCommitted:
                return _machine.OnSenderCommitted(this);

            default:
                throw new ArgumentOutOfRangeException(nameof(@event), @event, "Unknown event.");
        }
    }

    private bool ApplyCompleted(OperationCompleted completed)
    {
        OpState? op;
        if (completed.Branch is { } branch)
        {
            op = branch >= 0 && branch < _branches.Length ? _branches[branch].TryOp(completed.Op) : null;
        }
        else
        {
            op = Array.Find(_ops, o => o.Op == completed.Op);
        }

        if (op is null || op.Status != OpStatus.InFlight || op.Attempts != completed.Attempt)
        {
            return false; // a duplicate or stale answer: that attempt was already settled.
        }

        var name = BranchName(completed.Branch);
        var outcome = completed.Outcome;
        switch (outcome.Kind)
        {
            case OutcomeKind.Succeeded:
                _journal.Add(new(Now, JournalKinds.AttemptSucceeded, name, op.Op, op.Attempts, outcome.StatusCode, null, Millis(outcome), outcome.Body));
                Settle(completed.Branch, op with
                {
                    Status = OpStatus.Succeeded,
                    NextAttemptAt = null,
                    LastStatusCode = outcome.StatusCode,
                    LastError = null,
                    FinishedAt = Now,
                    ResultJson = outcome.ResultJson,
                });
                return true;

            case OutcomeKind.Failed when _machine.ObligationOf(_state, completed.Branch, op.Op) != Obligation.Required:
                _journal.Add(new(Now, JournalKinds.AttemptFailed, name, op.Op, op.Attempts, outcome.StatusCode, outcome.Error, Millis(outcome), outcome.Body));
                Settle(completed.Branch, op with
                {
                    Status = OpStatus.Failed,
                    NextAttemptAt = null,
                    LastStatusCode = outcome.StatusCode,
                    LastError = outcome.Error,
                    FinishedAt = Now,
                });
                return true;

            default:
                // Unknown, or a "failure" of an operation that may not fail: retry it.
                _journal.Add(new(Now, outcome.Kind == OutcomeKind.Failed ? JournalKinds.AttemptFailed : JournalKinds.AttemptUnknown,
                    name, op.Op, op.Attempts, outcome.StatusCode, outcome.Error, Millis(outcome), outcome.Body));
                Unknown(completed.Branch, op, outcome.StatusCode, outcome.Error ?? "unknown outcome");
                return true;
        }
    }

    private static long? Millis(BranchOutcome outcome) => outcome.Duration is { } d ? (long)Math.Round(d.TotalMilliseconds) : null;

    /// <summary>An in-flight call whose answer will never come: journaled, then handled as unknown.</summary>
    private void Lost(int? branch, OpState op, string why)
    {
        _journal.Add(new(Now, JournalKinds.AttemptUnknown, BranchName(branch), op.Op, op.Attempts, null, why));
        Unknown(branch, op, null, why);
    }

    /// <summary>An attempt whose outcome is unknown: retry after a backoff, give up, or retry at the cap (stuck).</summary>
    private void Unknown(int? branch, OpState op, int? statusCode, string error)
    {
        var policy = PolicyOf(branch);
        if (op.AttemptsInBudget < policy.MaxAttempts)
        {
            var delay = Backoff.Delay(op.AttemptsInBudget, policy, _context.Random.NextDouble());
            Replace(branch, op with { Status = OpStatus.Waiting, NextAttemptAt = Now + delay, LastStatusCode = statusCode, LastError = error });
        }
        else if (_machine.ObligationOf(_state, branch, op.Op) == Obligation.Tentative)
        {
            // It may have been applied: the protocol undoes it along with the rest.
            Settle(branch, op with { Status = OpStatus.Exhausted, NextAttemptAt = null, LastStatusCode = statusCode, LastError = error, FinishedAt = Now });
        }
        else
        {
            // Never abandoned: keep retrying at the capped delay; the transaction is stuck for an
            // operator (see Build).
            Replace(branch, op with
            {
                Status = OpStatus.Waiting,
                NextAttemptAt = Now + TimeSpan.FromMilliseconds(Math.Max(policy.MaxDelayMs, 1)),
                LastStatusCode = statusCode,
                LastError = error,
            });
        }
    }

    private void Settle(int? branch, OpState op)
    {
        Replace(branch, op);
        _machine.OnSettled(this, branch, op);
    }

    /// <summary>The next attempt of <paramref name="op"/>, in flight from now.</summary>
    private OpState Started(OpState op) => op with
    {
        Status = OpStatus.InFlight,
        Attempts = op.Attempts + 1,
        NextAttemptAt = null,
        FirstAttemptAt = op.FirstAttemptAt ?? Now,
        LastAttemptAt = Now,
        MaybeCalled = false, // called now: from here its status says what may have applied.
    };

    private void Replace(int? branch, OpState op)
    {
        if (branch is { } b)
        {
            _branches[b] = _branches[b].With(op);
        }
        else
        {
            _ops[Array.FindIndex(_ops, o => o.Op == op.Op)] = op;
        }
    }

    private void ForEachOp(Action<TransactionStep, int?, OpState> action)
    {
        for (var i = 0; i < _branches.Length; i++)
        {
            foreach (var op in _branches[i].Ops)
            {
                action(this, i, op);
            }
        }

        foreach (var op in _ops.ToArray())
        {
            action(this, null, op);
        }
    }

    private string? BranchName(int? branch) => branch is { } b ? Spec.Branches[b].Name : null;

    private TimeSpan CallTimeout(int? branch) =>
        TimeSpan.FromMilliseconds((branch is { } b ? Spec.Branches[b].TimeoutMs : null) ?? TreatyDefaults.BranchTimeoutMs);

    /// <summary>
    /// When an in-flight call is presumed lost. The invoker's own timeout answers long before; this
    /// only matters when the call's task was lost.
    /// </summary>
    private DateTimeOffset Watchdog(int? branch, OpState op) => (op.LastAttemptAt ?? Now) + (2 * CallTimeout(branch)) + TimeSpan.FromSeconds(1);

    private RetryPolicy PolicyOf(int? branch) =>
        (branch is { } b ? Spec.Branches[b].Retry : null) ?? Spec.Retry ?? RetryPolicy.Default;

    private ProtocolPhase PhaseNamed(string name) =>
        name.Length == 0 ? _machine.Shape.Phases[0] : _machine.Shape.PhaseNamed(name);

    /// <summary>The decision: the next state (or the same one when nothing changed), its commands and journal.</summary>
    internal Decision Build()
    {
        var branches = ImmutableArray.Create(_branches);
        var ops = ImmutableArray.Create(_ops);
        StuckCause? stuck = null;
        var wake = _wake;
        for (var i = 0; i < branches.Length; i++)
        {
            foreach (var op in branches[i].Ops)
            {
                Consider(i, op, ref stuck, ref wake);
            }
        }

        foreach (var op in ops)
        {
            Consider(null, op, ref stuck, ref wake);
        }

        if (IsTerminal)
        {
            wake = null;
            stuck = null;
        }

        if (stuck is not null && !_state.Stuck)
        {
            var detail = stuck.ToString();
            _journal.Add(new(Now, JournalKinds.Stuck, stuck.Branch, stuck.Op, stuck.Attempts, stuck.LastStatusCode, detail));
            _commands.Add(new Alert("stuck", $"Transaction {Spec.Gid} is stuck: {detail}"));
        }

        if (_journal.Count == 0 && _commands.Count == 0 && Status == _state.Status && _phase.Name == _state.Phase
            && Outcome == _state.Outcome && Reason == _state.Reason && stuck == _state.StuckOn && wake == _state.NextWakeAt
            && Unchanged(_branches, _state.Branches) && Unchanged(_ops, _state.Ops))
        {
            return new Decision(_state, [], []);
        }

        var next = _state with
        {
            Status = Status,
            Phase = _phase.Name,
            Outcome = Outcome,
            Reason = Reason,
            StuckOn = stuck,
            UpdatedAt = Now,
            NextWakeAt = wake,
            Branches = branches,
            Ops = ops,
        };
        return new Decision(next, [.. _commands], [.. _journal]) { WriteAhead = _writeAhead };
    }

    /// <summary>Adds one operation's wake-up and stuck mark: only the current phase's operation is
    /// retried (and can be stuck); any call in flight has its watchdog.</summary>
    private void Consider(int? branch, OpState op, ref StuckCause? stuck, ref DateTimeOffset? wake)
    {
        if (op.Status == OpStatus.InFlight)
        {
            // Whatever the phase (an action still in flight when a saga began to abort included):
            // were its answer lost, only the watchdog would look at it again.
            wake = Min(wake, Watchdog(branch, op));
        }

        if (op.Op != _phase.Op)
        {
            return;
        }

        var budget = PolicyOf(branch).MaxAttempts;
        bool over;
        if (op.Status == OpStatus.Waiting)
        {
            over = op.AttemptsInBudget >= budget;
            if (op.NextAttemptAt > Now)
            {
                wake = Min(wake, op.NextAttemptAt.Value);
            }
        }
        else
        {
            // A retry past the budget is still stuck while it is on its way: otherwise the flag would
            // flicker and the alert fire again on every capped retry.
            over = op.Status == OpStatus.InFlight && op.AttemptsInBudget > budget;
        }

        if (over && stuck is null)
        {
            stuck = new StuckCause(BranchName(branch), op.Op, op.Attempts, op.LastStatusCode, op.LastError);
        }
    }

    private static bool Unchanged<T>(T[] now, ImmutableArray<T> before)
        where T : class
    {
        for (var i = 0; i < now.Length; i++)
        {
            if (!ReferenceEquals(now[i], before[i]))
            {
                return false;
            }
        }

        return true;
    }

    private static DateTimeOffset Min(DateTimeOffset? a, DateTimeOffset b) => a is { } x && x < b ? x : b;
}
