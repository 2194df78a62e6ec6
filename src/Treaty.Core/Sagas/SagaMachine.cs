using System.Collections.Immutable;
using Treaty.Core.Engine;
using Treaty.Core.Model;

namespace Treaty.Core.Sagas;

/// <summary>
/// The orchestrated saga as a pure state machine. Forward: every branch's action runs once its
/// dependencies succeeded (independent branches in parallel). Backward: once a pre-pivot action
/// fails definitively, runs out of attempts, or the transaction times out, every action that may
/// have been applied is compensated, a branch only after every branch that depends on it.
/// A pivot, once started, can only be undone by its own definitive failure; once it succeeded the
/// saga only moves forward.
/// </summary>
public sealed class SagaMachine : IProtocolMachine
{
    private static readonly ImmutableArray<string> OpNames = [ProtocolNames.Action, ProtocolNames.Compensate];

    /// <inheritdoc />
    public Protocol Protocol => Protocol.Saga;

    /// <inheritdoc />
    public ImmutableArray<string> Operations => OpNames;

    /// <inheritdoc />
    public TransactionState Create(TransactionSpec spec, string fingerprint, DateTimeOffset now) => CreateState(spec, fingerprint, now);

    /// <inheritdoc />
    public Decision Decide(TransactionState state, TransactionEvent @event, DecisionContext context) => DecideCore(state, @event, context);

    /// <inheritdoc />
    public bool CanAbort(TransactionState state) =>
        state.Status is TransactionStatus.Pending or TransactionStatus.Running && !PivotStarted(state);

    /// <inheritdoc />
    public IEnumerable<ValidationError> Validate(TransactionSpec spec)
    {
        var pivots = new List<int>();
        for (var i = 0; i < spec.Branches.Length; i++)
        {
            var branch = spec.Branches[i];
            foreach (var op in branch.Urls.Keys)
            {
                if (!OpNames.Contains(op))
                {
                    yield return new($"branches[{i}].{op}", $"A saga branch has no '{op}' operation; use 'action' and 'compensate'.");
                }
            }

            if (branch.UrlOf(ProtocolNames.Action) is null)
            {
                yield return new($"branches[{i}].action", "A saga branch needs an 'action' URL.");
            }

            if (branch.Pivot)
            {
                pivots.Add(i);
            }
        }

        if (pivots.Count > 1)
        {
            yield return new($"branches[{pivots[1]}].pivot", "A saga has at most one pivot.");
            yield break;
        }

        var forwardOnly = new bool[spec.Branches.Length];
        if (pivots.Count == 1)
        {
            var pivot = pivots[0];
            var graph = Dag.From(spec);
            var after = graph.Descendants(pivot);
            var before = graph.Ancestors(pivot);
            for (var i = 0; i < spec.Branches.Length; i++)
            {
                if (i != pivot && !after.Contains(i) && !before.Contains(i))
                {
                    // A branch parallel to the pivot could fail after the pivot succeeded, and then
                    // nothing could be undone consistently.
                    yield return new($"branches[{i}].dependsOn", $"Branch '{spec.Branches[i].Name}' must run before or after the pivot '{spec.Branches[pivot].Name}', not beside it.");
                }

                forwardOnly[i] = i == pivot || after.Contains(i);
            }
        }

        for (var i = 0; i < spec.Branches.Length; i++)
        {
            if (!forwardOnly[i] && spec.Branches[i].UrlOf(ProtocolNames.Compensate) is null)
            {
                yield return new($"branches[{i}].compensate", "A saga branch before the pivot (or in a saga without one) needs a 'compensate' URL.");
            }
        }
    }

    internal static TransactionState CreateState(TransactionSpec spec, string fingerprint, DateTimeOffset now)
    {
        var branches = spec.Branches
            .Select(b => new BranchState(b.Name, [OpState.New(ProtocolNames.Action), OpState.New(ProtocolNames.Compensate)]))
            .ToImmutableArray();
        DateTimeOffset? deadline = spec.TimeoutMs is { } ms ? now.AddMilliseconds(ms) : null;
        return new TransactionState(spec, fingerprint, TransactionStatus.Pending, false, null, now, now, deadline, now, branches, 0);
    }

    internal static bool PivotPassed(TransactionState state)
    {
        for (var i = 0; i < state.Branches.Length; i++)
        {
            if (state.Spec.Branches[i].Pivot && state.Branches[i].Op(ProtocolNames.Action).Status == OpStatus.Succeeded)
            {
                return true;
            }
        }

        return false;
    }

    internal static bool PivotStarted(TransactionState state)
    {
        for (var i = 0; i < state.Branches.Length; i++)
        {
            if (state.Spec.Branches[i].Pivot && state.Branches[i].Op(ProtocolNames.Action).Status != OpStatus.NotStarted)
            {
                return true;
            }
        }

        return false;
    }

    internal static Decision DecideCore(TransactionState state, TransactionEvent @event, DecisionContext context)
    {
        var step = new Step(state, context);
        if (!step.Apply(@event))
        {
            return new Decision(state, [], []);
        }

        step.Progress();
        return step.Build();
    }

    /// <summary>The working copy of one decision.</summary>
    private sealed class Step(TransactionState state, DecisionContext context)
    {
        private readonly BranchState[] _branches = [.. state.Branches];
        private readonly List<Command> _commands = [];
        private readonly List<JournalEntry> _journal = [];
        private readonly DateTimeOffset _now = context.Now;
        private TransactionStatus _status = state.Status;
        private string? _reason = state.Reason;
        private string? _stuckDetail;

        private TransactionSpec Spec => state.Spec;

        /// <summary>Applies the event; false when it changes nothing (a stale or duplicate answer).</summary>
        public bool Apply(TransactionEvent @event)
        {
            if (_status.IsTerminal())
            {
                return false;
            }

            switch (@event)
            {
                case Submitted:
                    if (_status != TransactionStatus.Pending)
                    {
                        return false;
                    }

                    _status = TransactionStatus.Running;
                    _journal.Add(new(_now, JournalKinds.Submitted));
                    return true;

                case Resumed:
                    _journal.Add(new(_now, JournalKinds.Resumed));
                    if (_status == TransactionStatus.Pending)
                    {
                        _status = TransactionStatus.Running;
                    }

                    for (var i = 0; i < _branches.Length; i++)
                    {
                        foreach (var op in _branches[i].Ops)
                        {
                            if (op.Status == OpStatus.InFlight)
                            {
                                const string lost = "outcome lost: the coordinator restarted while the call was in flight";
                                _journal.Add(new(_now, JournalKinds.AttemptUnknown, Spec.Branches[i].Name, op.Op, op.Attempts, null, lost));
                                Unknown(i, op, null, lost);
                            }
                        }
                    }

                    return true;

                case BranchCompleted completed:
                    return ApplyCompleted(completed);

                case TimerFired:
                    for (var i = 0; i < _branches.Length; i++)
                    {
                        foreach (var op in _branches[i].Ops)
                        {
                            if (op.Status == OpStatus.InFlight && Watchdog(i, op) <= _now)
                            {
                                // The call's answer never came back (it was lost with its task); retrying
                                // is safe because the participant deduplicates on the idempotency key.
                                const string lost = "no answer from the call before its watchdog expired";
                                _journal.Add(new(_now, JournalKinds.AttemptUnknown, Spec.Branches[i].Name, op.Op, op.Attempts, null, lost));
                                Unknown(i, op, null, lost);
                            }
                        }
                    }

                    return true;

                case AdminRetry retry:
                    _journal.Add(new(_now, JournalKinds.OperatorRetry, Detail: $"by {retry.Actor}"));
                    for (var i = 0; i < _branches.Length; i++)
                    {
                        foreach (var op in _branches[i].Ops)
                        {
                            if (op.Status == OpStatus.Waiting)
                            {
                                _branches[i] = _branches[i].With(op with { BudgetBase = op.Attempts, NextAttemptAt = _now });
                            }
                        }
                    }

                    return true;

                case AdminAbort abort:
                    if (_status is not (TransactionStatus.Pending or TransactionStatus.Running) || PivotStarted(state))
                    {
                        return false;
                    }

                    var why = $"aborted by operator {abort.Actor}" + (string.IsNullOrEmpty(abort.Reason) ? "" : $": {abort.Reason}");
                    _journal.Add(new(_now, JournalKinds.OperatorAbort, Detail: why));
                    BeginAbort(why);
                    return true;

                default:
                    throw new ArgumentOutOfRangeException(nameof(@event), @event, "Unknown event.");
            }
        }

        private bool ApplyCompleted(BranchCompleted completed)
        {
            if (completed.Branch < 0 || completed.Branch >= _branches.Length)
            {
                return false;
            }

            var branch = _branches[completed.Branch];
            var op = branch.Ops.FirstOrDefault(o => o.Op == completed.Op);
            if (op is null || op.Status != OpStatus.InFlight || op.Attempts != completed.Attempt)
            {
                return false; // a duplicate or stale answer: that attempt was already settled.
            }

            var name = Spec.Branches[completed.Branch].Name;
            var outcome = completed.Outcome;
            switch (outcome.Kind)
            {
                case OutcomeKind.Succeeded:
                    _journal.Add(new(_now, JournalKinds.AttemptSucceeded, name, op.Op, op.Attempts, outcome.StatusCode));
                    _branches[completed.Branch] = branch.With(op with
                    {
                        Status = OpStatus.Succeeded,
                        NextAttemptAt = null,
                        LastStatusCode = outcome.StatusCode,
                        LastError = null,
                        FinishedAt = _now,
                        ResultJson = outcome.ResultJson,
                    });
                    return true;

                case OutcomeKind.Failed when op.Op == ProtocolNames.Action && !PivotPassed(state):
                    _journal.Add(new(_now, JournalKinds.AttemptFailed, name, op.Op, op.Attempts, outcome.StatusCode, outcome.Error));
                    _branches[completed.Branch] = branch.With(op with
                    {
                        Status = OpStatus.Failed,
                        NextAttemptAt = null,
                        LastStatusCode = outcome.StatusCode,
                        LastError = outcome.Error,
                        FinishedAt = _now,
                    });
                    return true;

                default:
                    // Unknown, or a "failure" of an operation that may not fail (a compensation, or a
                    // step after the pivot): retry it.
                    _journal.Add(new(_now, outcome.Kind == OutcomeKind.Failed ? JournalKinds.AttemptFailed : JournalKinds.AttemptUnknown,
                        name, op.Op, op.Attempts, outcome.StatusCode, outcome.Error));
                    Unknown(completed.Branch, op, outcome.StatusCode, outcome.Error ?? "unknown outcome");
                    return true;
            }
        }

        private void Unknown(int index, OpState op, int? statusCode, string error)
        {
            var spec = Spec.Branches[index];
            var policy = PolicyOf(spec);
            var mayGiveUp = op.Op == ProtocolNames.Action && !spec.Pivot && !PivotPassed(state);
            OpState next;
            if (op.AttemptsInBudget < policy.MaxAttempts)
            {
                var delay = Backoff.Delay(op.AttemptsInBudget, policy, context.Random.NextDouble());
                next = op with { Status = OpStatus.Waiting, NextAttemptAt = _now + delay, LastStatusCode = statusCode, LastError = error };
            }
            else if (mayGiveUp)
            {
                // It may have been applied: the abort compensates it too.
                next = op with { Status = OpStatus.Exhausted, NextAttemptAt = null, LastStatusCode = statusCode, LastError = error, FinishedAt = _now };
            }
            else
            {
                // Never abandoned: keep retrying at the capped delay; the transaction is stuck for an operator.
                next = op with
                {
                    Status = OpStatus.Waiting,
                    NextAttemptAt = _now + TimeSpan.FromMilliseconds(Math.Max(policy.MaxDelayMs, 1)),
                    LastStatusCode = statusCode,
                    LastError = error,
                };
                _stuckDetail = $"{spec.Name}.{op.Op} failed {op.Attempts} times, last: {error}";
                // While aborting, keep why it aborted in front: it is restored when the abort completes.
                _reason = _status == TransactionStatus.Aborting ? $"{AbortReason(_reason)}{StuckMarker}{_stuckDetail}" : _stuckDetail;
            }

            _branches[index] = _branches[index].With(next);
        }

        private void BeginAbort(string reason)
        {
            _status = TransactionStatus.Aborting;
            _reason = reason;
            _journal.Add(new(_now, JournalKinds.Aborting, Detail: reason));
        }

        /// <summary>Moves forward (or backward) as far as the state allows now.</summary>
        public void Progress()
        {
            if (_status == TransactionStatus.Running)
            {
                CheckAbort();
            }

            if (_status == TransactionStatus.Running)
            {
                RunForward();
            }

            if (_status == TransactionStatus.Aborting)
            {
                RunBackward();
            }
        }

        private void CheckAbort()
        {
            for (var i = 0; i < _branches.Length; i++)
            {
                var action = _branches[i].Op(ProtocolNames.Action);
                if (action.Status is OpStatus.Failed or OpStatus.Exhausted)
                {
                    var how = action.Status == OpStatus.Failed ? "failed" : "ran out of attempts";
                    BeginAbort($"{Spec.Branches[i].Name}.action {how}: {action.LastError}");
                    return;
                }
            }

            if (state.Deadline is { } deadline && deadline <= _now && !PivotStartedNow())
            {
                BeginAbort("transaction timed out");
            }
        }

        private bool PivotStartedNow()
        {
            for (var i = 0; i < _branches.Length; i++)
            {
                if (Spec.Branches[i].Pivot && _branches[i].Op(ProtocolNames.Action).Status != OpStatus.NotStarted)
                {
                    return true;
                }
            }

            return false;
        }

        private void RunForward()
        {
            var allDone = true;
            for (var i = 0; i < _branches.Length; i++)
            {
                var action = _branches[i].Op(ProtocolNames.Action);
                if (action.Status != OpStatus.Succeeded)
                {
                    allDone = false;
                }

                var due = action.Status switch
                {
                    OpStatus.NotStarted => DependenciesSucceeded(i),
                    OpStatus.Waiting => action.NextAttemptAt <= _now,
                    _ => false,
                };
                if (due)
                {
                    Start(i, action);
                }
            }

            if (allDone)
            {
                _status = TransactionStatus.Committed;
                _reason = null;
                _journal.Add(new(_now, JournalKinds.Committed));
                _commands.Add(new Finish(TransactionStatus.Committed));
            }
        }

        private bool DependenciesSucceeded(int index)
        {
            foreach (var dependency in Spec.Branches[index].DependsOn)
            {
                var j = IndexOf(dependency);
                if (_branches[j].Op(ProtocolNames.Action).Status != OpStatus.Succeeded)
                {
                    return false;
                }
            }

            return true;
        }

        private void RunBackward()
        {
            var pending = false;
            for (var i = 0; i < _branches.Length; i++)
            {
                var action = _branches[i].Op(ProtocolNames.Action);
                if (action.Status == OpStatus.InFlight)
                {
                    pending = true; // wait for its answer before undoing it or what it depends on.
                    continue;
                }

                if (Settled(i))
                {
                    continue;
                }

                pending = true;
                if (!DependentsSettled(i))
                {
                    continue;
                }

                var compensate = _branches[i].Op(ProtocolNames.Compensate);
                if (compensate.Status == OpStatus.NotStarted || (compensate.Status == OpStatus.Waiting && compensate.NextAttemptAt <= _now))
                {
                    Start(i, compensate);
                }
            }

            if (!pending)
            {
                _status = TransactionStatus.Aborted;
                _reason = AbortReason(_reason);
                _journal.Add(new(_now, JournalKinds.Aborted, Detail: _reason));
                _commands.Add(new Finish(TransactionStatus.Aborted));
            }
        }

        /// <summary>Nothing left to undo for this branch: its action never applied, or it was compensated.</summary>
        private bool Settled(int index)
        {
            var action = _branches[index].Op(ProtocolNames.Action);
            return action.Status != OpStatus.InFlight
                && (!action.MayHaveApplied() || _branches[index].Op(ProtocolNames.Compensate).Status == OpStatus.Succeeded);
        }

        private bool DependentsSettled(int index)
        {
            var name = Spec.Branches[index].Name;
            for (var j = 0; j < _branches.Length; j++)
            {
                if (Spec.Branches[j].DependsOn.Contains(name) && !Settled(j))
                {
                    return false;
                }
            }

            return true;
        }

        private void Start(int index, OpState op)
        {
            var spec = Spec.Branches[index];
            var url = spec.UrlOf(op.Op)
                ?? throw new InvalidOperationException($"Branch '{spec.Name}' has no '{op.Op}' URL; validation should have refused it.");
            var attempt = op.Attempts + 1;
            _branches[index] = _branches[index].With(op with
            {
                Status = OpStatus.InFlight,
                Attempts = attempt,
                NextAttemptAt = null,
                FirstAttemptAt = op.FirstAttemptAt ?? _now,
                LastAttemptAt = _now,
            });
            _journal.Add(new(_now, JournalKinds.AttemptStarted, spec.Name, op.Op, attempt));
            var timeout = TimeSpan.FromMilliseconds(spec.TimeoutMs ?? TreatyDefaults.BranchTimeoutMs);
            _commands.Add(new InvokeBranch(index, spec.Name, op.Op, url, attempt, timeout));
        }

        private int IndexOf(string name)
        {
            for (var i = 0; i < Spec.Branches.Length; i++)
            {
                if (Spec.Branches[i].Name == name)
                {
                    return i;
                }
            }

            throw new InvalidOperationException($"Unknown branch '{name}'.");
        }

        /// <summary>
        /// When an in-flight call is presumed lost. The invoker's own timeout answers long before;
        /// this only matters when the call's task was lost.
        /// </summary>
        private DateTimeOffset Watchdog(int index, OpState op)
        {
            var timeout = TimeSpan.FromMilliseconds(Spec.Branches[index].TimeoutMs ?? TreatyDefaults.BranchTimeoutMs);
            return (op.LastAttemptAt ?? _now) + (2 * timeout) + TimeSpan.FromSeconds(1);
        }

        private RetryPolicy PolicyOf(BranchSpec spec) => spec.Retry ?? Spec.Retry ?? RetryPolicy.Default;

        public Decision Build()
        {
            var branches = ImmutableArray.Create(_branches);
            var stuck = false;
            var wake = (DateTimeOffset?)null;
            for (var i = 0; i < branches.Length; i++)
            {
                var spec = Spec.Branches[i];
                var policy = PolicyOf(spec);
                foreach (var op in branches[i].Ops)
                {
                    if (op.Status == OpStatus.InFlight)
                    {
                        // Whatever the phase (an action still in flight when the saga began to abort
                        // included): were its answer lost, only the watchdog would look at it again.
                        wake = Min(wake, Watchdog(i, op));
                    }

                    var relevant = _status switch
                    {
                        TransactionStatus.Running => op.Op == ProtocolNames.Action,
                        TransactionStatus.Aborting => op.Op == ProtocolNames.Compensate,
                        _ => false,
                    };
                    if (!relevant)
                    {
                        continue;
                    }

                    if (op.Status == OpStatus.Waiting)
                    {
                        stuck |= op.AttemptsInBudget >= policy.MaxAttempts;
                        if (op.NextAttemptAt > _now)
                        {
                            wake = Min(wake, op.NextAttemptAt.Value);
                        }
                    }
                    else if (op.Status == OpStatus.InFlight)
                    {
                        // A retry past the budget is still stuck while it is on its way: otherwise the
                        // flag would flicker and the alert fire again on every capped retry.
                        stuck |= op.AttemptsInBudget > policy.MaxAttempts;
                    }
                }
            }

            if (_status == TransactionStatus.Running && state.Deadline is { } deadline && deadline > _now && !PivotStartedNow())
            {
                wake = Min(wake, deadline);
            }

            if (_status.IsTerminal())
            {
                wake = null;
                stuck = false;
            }

            if (stuck && !state.Stuck)
            {
                var detail = _stuckDetail ?? _reason;
                _journal.Add(new(_now, JournalKinds.Stuck, Detail: detail));
                _commands.Add(new Alert("stuck", $"Transaction {Spec.Gid} is stuck: {detail}"));
            }

            if (_journal.Count == 0 && _commands.Count == 0 && _status == state.Status && stuck == state.Stuck
                && wake == state.NextWakeAt && BranchesUnchanged())
            {
                return new Decision(state, [], []);
            }

            var next = state with
            {
                Status = _status,
                Stuck = stuck,
                Reason = _reason,
                UpdatedAt = _now,
                NextWakeAt = wake,
                Branches = branches,
            };
            return new Decision(next, [.. _commands], [.. _journal]);
        }

        private const string StuckMarker = " — stuck: ";

        private static string? AbortReason(string? reason)
        {
            var at = reason?.IndexOf(StuckMarker, StringComparison.Ordinal) ?? -1;
            return at >= 0 ? reason![..at] : reason;
        }

        private bool BranchesUnchanged()
        {
            for (var i = 0; i < _branches.Length; i++)
            {
                if (!ReferenceEquals(_branches[i], state.Branches[i]))
                {
                    return false;
                }
            }

            return true;
        }

        private static DateTimeOffset Min(DateTimeOffset? a, DateTimeOffset b) => a is { } x && x < b ? x : b;
    }
}
