using Treaty.Core.Engine;
using Treaty.Core.Model;

namespace Treaty.Core.Protocols;

/// <summary>
/// The orchestrated saga (Garcia-Molina and Salem). Forward: every branch's action runs once its
/// dependencies succeeded (independent branches in parallel). Backward: once a pre-pivot action
/// fails definitively, runs out of attempts, or the transaction times out, every action that may
/// have been applied is compensated, a branch only after every branch that depends on it.
/// A pivot, once started, can only be undone by its own definitive failure; once it succeeded the
/// saga only moves forward.
/// </summary>
public sealed class SagaMachine : ProtocolMachine
{
    private const string Action = ProtocolNames.Action;
    private const string Compensate = ProtocolNames.Compensate;

    private static readonly ProtocolShape SagaShape = new(
        BranchOperations: [Action, Compensate],
        RequiredOperations: [Action],
        TransactionOperations: [],
        Phases: [new(Action, Action), new(Compensate, Compensate)],
        DependsOn: DependsOnDefault.PreviousBranch,
        AllowsDependsOn: true);

    /// <inheritdoc />
    public override Protocol Protocol => Protocol.Saga;

    /// <inheritdoc />
    public override ProtocolShape Shape => SagaShape;

    /// <inheritdoc />
    protected override bool SupportsPivot => true;

    /// <inheritdoc />
    public override bool CanAbort(TransactionState state) =>
        state.Status is TransactionStatus.Pending or TransactionStatus.Running && !PivotStarted(state);

    /// <inheritdoc />
    public override IEnumerable<ValidationError> Validate(TransactionSpec spec)
    {
        foreach (var error in base.Validate(spec))
        {
            yield return error;
        }

        var pivots = new List<int>();
        for (var i = 0; i < spec.Branches.Length; i++)
        {
            if (spec.Branches[i].Pivot)
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
            if (!forwardOnly[i] && spec.Branches[i].UrlOf(Compensate) is null)
            {
                yield return new($"branches[{i}].compensate", "A saga branch before the pivot (or in a saga without one) needs a 'compensate' URL.");
            }
        }
    }

    /// <inheritdoc />
    public override BranchReading ReadBranch(TransactionState state, int branch)
    {
        var action = state.Branches[branch].Op(Action);
        var compensate = state.Branches[branch].Op(Compensate);
        var status = compensate.Status switch
        {
            OpStatus.Succeeded => "compensated",
            OpStatus.InFlight or OpStatus.Waiting => "compensating",
            _ => action.Status switch
            {
                OpStatus.InFlight or OpStatus.Waiting => "running",
                OpStatus.Succeeded => "succeeded",
                OpStatus.Failed => "failed",
                OpStatus.Exhausted => "unknown",
                _ => "pending",
            },
        };
        return new BranchReading(status, null);
    }

    internal static bool PivotPassed(TransactionState state) => PivotIs(state, s => s == OpStatus.Succeeded);

    internal static bool PivotStarted(TransactionState state) => PivotIs(state, s => s != OpStatus.NotStarted);

    private static bool PivotIs(TransactionState state, Func<OpStatus, bool> test)
    {
        for (var i = 0; i < state.Branches.Length; i++)
        {
            if (state.Spec.Branches[i].Pivot && test(state.Branches[i].Op(Action).Status))
            {
                return true;
            }
        }

        return false;
    }

    /// <inheritdoc />
    protected internal override Obligation ObligationOf(TransactionState state, int? branch, string op) =>
        op == Compensate || PivotPassed(state) ? Obligation.Required
        : state.Spec.Branches[branch!.Value].Pivot ? Obligation.Decisive
        : Obligation.Tentative;

    /// <inheritdoc />
    protected internal override void OnAbortRequested(TransactionStep step, string reason) => BeginAbort(step, reason);

    /// <inheritdoc />
    protected internal override void OnSettled(TransactionStep step, int? branch, OpState op)
    {
        if (op is { Op: Action, Status: OpStatus.Succeeded } && step.Spec.Branches[branch!.Value].Pivot)
        {
            // The point of no return: from here the saga only moves forward.
            step.Decide(TransactionOutcome.Commit, $"pivot {step.Spec.Branches[branch.Value].Name} succeeded");
        }
    }

    /// <inheritdoc />
    protected internal override void Progress(TransactionStep step)
    {
        if (step.Status == TransactionStatus.Running)
        {
            CheckAbort(step);
        }

        if (step.Status == TransactionStatus.Running)
        {
            RunForward(step);
        }

        if (step.Status == TransactionStatus.Aborting)
        {
            RunBackward(step);
        }
    }

    private static void BeginAbort(TransactionStep step, string reason)
    {
        step.Decide(TransactionOutcome.Abort, reason);
        step.EnterPhase(Compensate);
    }

    private static void CheckAbort(TransactionStep step)
    {
        for (var i = 0; i < step.BranchCount; i++)
        {
            var action = step.Op(i, Action);
            if (action.Status is OpStatus.Failed or OpStatus.Exhausted)
            {
                var how = action.Status == OpStatus.Failed ? "failed" : "ran out of attempts";
                BeginAbort(step, $"{step.Spec.Branches[i].Name}.action {how}: {action.LastError}");
                return;
            }
        }

        if (step.Original.Deadline is { } deadline && deadline <= step.Now && !PivotStartedNow(step))
        {
            BeginAbort(step, "transaction timed out");
        }
    }

    private static bool PivotStartedNow(TransactionStep step)
    {
        for (var i = 0; i < step.BranchCount; i++)
        {
            if (step.Spec.Branches[i].Pivot && step.Op(i, Action).Status != OpStatus.NotStarted)
            {
                return true;
            }
        }

        return false;
    }

    private static void RunForward(TransactionStep step)
    {
        var allDone = true;
        var started = 0;
        var ahead = true;
        for (var i = 0; i < step.BranchCount; i++)
        {
            var action = step.Op(i, Action);
            if (action.Status != OpStatus.Succeeded)
            {
                allDone = false;
            }

            if (action.Status == OpStatus.NotStarted ? DependenciesSucceeded(step, i) : step.IsRetryDue(action))
            {
                ahead &= action.Status == OpStatus.NotStarted && MayStartAhead(step.Spec, i) && step.Outcome is null;
                started++;
                step.Start(i, Action);
            }
        }

        if (started > 0 && ahead)
        {
            // Only first calls of tentative actions that follow another: a restart before this write
            // lands marks them maybe-called (OnResumed), so an abort still undoes them.
            step.ActBeforeDurable();
        }

        if (allDone)
        {
            step.Finish(TransactionStatus.Committed);
        }
        else if (step.Original.Deadline is { } deadline && deadline > step.Now && !PivotStartedNow(step))
        {
            // Re-checked after starting: a pivot started just now ends the deadline's hold.
            step.WakeAt(deadline);
        }
    }

    /// <summary>
    /// The saga's forward step does not wait for its write: the first call of a tentative action
    /// (not the pivot, no outcome decided yet) that depends on another leaves while the state that
    /// records it is being written. What may leave this way from a durable state is exactly what
    /// <see cref="OnResumed"/> marks maybe-called, so a restart before the write lands loses nothing:
    /// an abort compensates those actions too (a compensation of an action that never arrived is the
    /// participant's null compensation). The submit and the pivot stay write-ahead.
    /// </summary>
    private static bool MayStartAhead(TransactionSpec spec, int index)
    {
        var branch = spec.Branches[index];
        if (branch.Pivot || branch.DependsOn.Length == 0)
        {
            return false;
        }

        // A branch after the pivot starts only once the pivot succeeded, i.e. after the commit
        // decision, which is written ahead; it may not have a compensation at all.
        for (var pivot = 0; pivot < spec.Branches.Length; pivot++)
        {
            if (spec.Branches[pivot].Pivot)
            {
                return !Dag.From(spec).Descendants(pivot).Contains(index);
            }
        }

        return true;
    }

    /// <inheritdoc />
    protected internal override void OnResumed(TransactionStep step)
    {
        if (step.Outcome is not null)
        {
            return; // decided: forward steps after the decision were written ahead.
        }

        for (var i = 0; i < step.BranchCount; i++)
        {
            if (step.Op(i, Action).Status == OpStatus.NotStarted && MayStartAhead(step.Spec, i) && DependenciesMayHaveApplied(step, i))
            {
                step.MarkMaybeCalled(i, Action, "may have been called before the coordinator restarted: its step did not wait for its write");
            }
        }
    }

    // Every dependency was called and may have applied (succeeded, or its outcome unknown): the
    // step that would start this branch could have been taken and its write lost. A dependency
    // marked maybe-called itself is not enough: this branch would have waited for its success.
    private static bool DependenciesMayHaveApplied(TransactionStep step, int index)
    {
        foreach (var dependency in step.Spec.Branches[index].DependsOn)
        {
            var action = step.Op(IndexOf(step.Spec, dependency), Action);
            if (action.Status == OpStatus.NotStarted || !action.MayHaveApplied())
            {
                return false;
            }
        }

        return true;
    }

    private static bool DependenciesSucceeded(TransactionStep step, int index)
    {
        foreach (var dependency in step.Spec.Branches[index].DependsOn)
        {
            if (step.Op(IndexOf(step.Spec, dependency), Action).Status != OpStatus.Succeeded)
            {
                return false;
            }
        }

        return true;
    }

    private static void RunBackward(TransactionStep step)
    {
        var pending = false;
        for (var i = 0; i < step.BranchCount; i++)
        {
            if (step.Op(i, Action).Status == OpStatus.InFlight)
            {
                pending = true; // wait for its answer before undoing it or what it depends on.
                continue;
            }

            if (Settled(step, i))
            {
                continue;
            }

            pending = true;
            if (DependentsSettled(step, i) && step.IsDue(step.Op(i, Compensate)))
            {
                step.Start(i, Compensate);
            }
        }

        if (!pending)
        {
            step.Finish(TransactionStatus.Aborted);
        }
    }

    /// <summary>Nothing left to undo for this branch: its action never applied, or it was compensated.</summary>
    private static bool Settled(TransactionStep step, int index)
    {
        var action = step.Op(index, Action);
        return action.Status != OpStatus.InFlight
            && (!action.MayHaveApplied() || step.Op(index, Compensate).Status == OpStatus.Succeeded);
    }

    private static bool DependentsSettled(TransactionStep step, int index)
    {
        var name = step.Spec.Branches[index].Name;
        for (var j = 0; j < step.BranchCount; j++)
        {
            if (step.Spec.Branches[j].DependsOn.Contains(name) && !Settled(step, j))
            {
                return false;
            }
        }

        return true;
    }

    private static int IndexOf(TransactionSpec spec, string name)
    {
        for (var i = 0; i < spec.Branches.Length; i++)
        {
            if (spec.Branches[i].Name == name)
            {
                return i;
            }
        }

        throw new InvalidOperationException($"Unknown branch '{name}'.");
    }
}
