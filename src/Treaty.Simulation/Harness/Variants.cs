using Treaty.Core.Engine;
using Treaty.Core.Model;

namespace Treaty.Simulation.Harness;

/// <summary>
/// A known-bad variant: a broken system the simulation must catch. Each is a wrapper or a policy
/// in the harness (or, for act-before-persist, the engine's one test seam); production code is
/// unchanged. <see cref="SimVariants.Name(SimVariant)"/> is what <c>TREATY_SIM_VARIANT</c> takes.
/// </summary>
internal enum SimVariant
{
    None,
    ActBeforePersist,
    SkipCompensation,
    NoHangingPrevention,
    LoseEarlyWakeUp,
    GidPerAttempt,
    Misclassify500,
    KeyPerAttempt,
    CompensateInForwardOrder,
    ForgetMaybeCalled,
    StartAfterDeadline,
    TwoPhaseCommitBeforeDurable,
    TwoPhaseParticipantDecidesAlone,
    TwoPhaseResumeVoting,
    TccConfirmAfterFailedTry,
    TccNoCancelOfUnknownTry,
    ThreePhaseCommitBeforeAcks,
    ThreePhaseResumeCommits,
    ThreePhaseUnknownPreCommitAsAck,
    MsgDeliverAfterRollback,
    Msg503AsRollback,
    ChoreographyNoInbox,
    ChoreographyNoPublisherConfirms,
    ChoreographyAckBeforeCommit,
    StoreIgnoresFence,
}

internal static class SimVariants
{
    /// <summary>Every known-bad variant: its name (for <c>TREATY_SIM_VARIANT</c>) and what it breaks.</summary>
    public static readonly IReadOnlyList<(SimVariant Variant, string Name, string Breaks)> All =
    [
        (SimVariant.ActBeforePersist, "act-before-persist", "the engine calls branches before the decision is durable"),
        (SimVariant.SkipCompensation, "skip-compensation", "saga: payment's compensation is marked done without being called"),
        (SimVariant.NoHangingPrevention, "no-hanging-prevention", "participants run a forward op that arrives after its compensation"),
        (SimVariant.LoseEarlyWakeUp, "lose-early-wakeup", "a timer that fires early disarms itself (the old engine bug)"),
        (SimVariant.GidPerAttempt, "gid-per-attempt", "the checkout handler mints a new gid each time it runs for a key"),
        (SimVariant.Misclassify500, "misclassify-500", "the invoker takes a 500 for a definitive failure"),
        (SimVariant.KeyPerAttempt, "key-per-attempt", "the invoker sends a new Idempotency-Key on every attempt"),
        (SimVariant.CompensateInForwardOrder, "compensate-forward-order", "saga: compensations run in forward dependency order"),
        (SimVariant.ForgetMaybeCalled, "forget-maybe-called", "saga: a restarted coordinator forgets that the forward step it did not wait for may have called the next action"),
        (SimVariant.StartAfterDeadline, "start-after-deadline", "saga/tcc/2pc/3pc: the deadline is ignored, forward ops start after it"),
        (SimVariant.TwoPhaseCommitBeforeDurable, "2pc-commit-before-durable", "2PC: commits leave before the commit decision is durable"),
        (SimVariant.TwoPhaseParticipantDecidesAlone, "2pc-participant-decides-alone", "2PC: a prepared participant rolls back on its own timeout"),
        (SimVariant.TwoPhaseResumeVoting, "2pc-resume-voting", "2PC: a restarted coordinator resumes voting instead of presuming abort"),
        (SimVariant.TccConfirmAfterFailedTry, "tcc-confirm-after-failed-try", "TCC: a failed try is taken as a success, so it confirms"),
        (SimVariant.TccNoCancelOfUnknownTry, "tcc-no-cancel-unknown-try", "TCC: a try whose outcome stayed unknown is taken as failed, never cancelled"),
        (SimVariant.ThreePhaseCommitBeforeAcks, "3pc-commit-before-acks", "3PC: commit is decided without waiting for the preCommit acknowledgements"),
        (SimVariant.ThreePhaseResumeCommits, "3pc-resume-commits", "3PC: a coordinator that resumes a transaction in its preCommit phase decides commit"),
        (SimVariant.ThreePhaseUnknownPreCommitAsAck, "3pc-unknown-precommit-as-ack", "3PC: a preCommit whose outcome stayed unknown is taken as acknowledged"),
        (SimVariant.MsgDeliverAfterRollback, "msg-deliver-after-rollback", "msg: delivers although queryPrepared said the sender rolled back"),
        (SimVariant.Msg503AsRollback, "msg-503-as-rollback", "msg: a 503 from queryPrepared is taken as 'rolled back'"),
        (SimVariant.ChoreographyNoInbox, "chor-no-inbox", "choreography: the services handle deliveries without the inbox, so a redelivered event is handled again"),
        (SimVariant.ChoreographyNoPublisherConfirms, "chor-no-publisher-confirms", "choreography: the relay's send returns before the broker has the message, so a refused publish or a crash loses it"),
        (SimVariant.ChoreographyAckBeforeCommit, "chor-ack-before-commit", "choreography: a delivery is acknowledged on arrival, before the inbox commit, so a failed handling loses it"),
        (SimVariant.StoreIgnoresFence, "store-ignores-fence", "several coordinators: the store does not check a write's owner and epoch, so a stale owner's writes go through"),
    ];

    /// <summary>The mode a variant breaks: the choreography's run in the choreography mode, the leases' in the multi-coordinator mode, the others in the normal one.</summary>
    public static SimMode ModeFor(SimVariant variant) => variant switch
    {
        SimVariant.ChoreographyNoInbox or SimVariant.ChoreographyNoPublisherConfirms or SimVariant.ChoreographyAckBeforeCommit => SimMode.Choreography,
        SimVariant.StoreIgnoresFence => SimMode.MultiCoordinator,
        _ => SimMode.Normal,
    };

    public static string Name(SimVariant variant) => variant == SimVariant.None ? "correct" : All.First(v => v.Variant == variant).Name;

    public static SimVariant Parse(string name) =>
        All.FirstOrDefault(v => v.Name == name) is { Name: not null } found
            ? found.Variant
            : throw new ArgumentException($"TREATY_SIM_VARIANT={name}: use one of {string.Join(", ", All.Select(v => v.Name))} (or partition for the 3PC partition mode, choreography for the choreography mode).");

    /// <summary><paramref name="machine"/> as it behaves under <paramref name="variant"/>.</summary>
    public static IProtocolMachine Machine(IProtocolMachine machine, SimVariant variant) => (variant, machine.Protocol) switch
    {
        (SimVariant.SkipCompensation, Protocol.Saga) => new SkipCompensationMachine(machine, "payment"),
        (SimVariant.LoseEarlyWakeUp, _) => new LoseEarlyWakeUpMachine(machine),
        (SimVariant.CompensateInForwardOrder, Protocol.Saga) => new ForwardOrderCompensationMachine(machine),
        (SimVariant.ForgetMaybeCalled, Protocol.Saga) => new ForgetMaybeCalledMachine(machine),
        (SimVariant.StartAfterDeadline, not Protocol.Msg) => new IgnoreDeadlineMachine(machine),
        (SimVariant.TwoPhaseCommitBeforeDurable, Protocol.TwoPhaseCommit) => new CommitBeforeDurableMachine(machine),
        (SimVariant.TwoPhaseResumeVoting, Protocol.TwoPhaseCommit) => new ResumeVotingMachine(machine),
        (SimVariant.TccConfirmAfterFailedTry, Protocol.Tcc) => new RewriteOutcomeMachine(machine, ProtocolNames.Try,
            (_, o) => o.Kind == OutcomeKind.Failed ? BranchOutcome.Success(200, "{}") : o),
        (SimVariant.TccNoCancelOfUnknownTry, Protocol.Tcc) => new RewriteOutcomeMachine(machine, ProtocolNames.Try,
            (op, o) => o.Kind == OutcomeKind.Unknown && op.last ? BranchOutcome.Failure(409, "out of attempts: taken as refused") : o),
        (SimVariant.ThreePhaseCommitBeforeAcks, Protocol.ThreePhaseCommit) => new FakeSuccessMachine(machine, ProtocolNames.PreCommit),
        (SimVariant.ThreePhaseResumeCommits, Protocol.ThreePhaseCommit) => new ResumeCommitsMachine(machine),
        (SimVariant.ThreePhaseUnknownPreCommitAsAck, Protocol.ThreePhaseCommit) => new RewriteOutcomeMachine(machine, ProtocolNames.PreCommit,
            (op, o) => o.Kind == OutcomeKind.Unknown && op.last ? BranchOutcome.Success(200, "{}") : o),
        (SimVariant.MsgDeliverAfterRollback, Protocol.Msg) => new RewriteOutcomeMachine(machine, ProtocolNames.QueryPrepared,
            (_, o) => o.Kind == OutcomeKind.Failed ? BranchOutcome.Success(200, "{}") : o),
        _ => machine,
    };

    /// <summary>The invoker's classification under <paramref name="variant"/>: null means <see cref="BranchOutcome.FromHttp"/>.</summary>
    public static Func<BranchCall, WireReply, BranchOutcome?>? Classification(SimVariant variant) => variant switch
    {
        SimVariant.Misclassify500 => (_, reply) => reply.Status == 500 ? BranchOutcome.Failure(500, "HTTP 500") : null,
        SimVariant.Msg503AsRollback => (call, reply) =>
            call.Op == ProtocolNames.QueryPrepared && reply.Status == 503 ? BranchOutcome.Failure(503, "HTTP 503: taken as rolled back") : null,
        _ => null,
    };
}

/// <summary>A machine that is another one but for what a known-bad variant changes.</summary>
internal abstract class MachineVariant(IProtocolMachine machine) : IProtocolMachine
{
    protected IProtocolMachine Inner => machine;

    public Protocol Protocol => machine.Protocol;

    public ProtocolShape Shape => machine.Shape;

    public IEnumerable<ValidationError> Validate(TransactionSpec spec) => machine.Validate(spec);

    public TransactionState Create(TransactionSpec spec, string fingerprint, DateTimeOffset now) => machine.Create(spec, fingerprint, now);

    public virtual bool CanAbort(TransactionState state) => machine.CanAbort(state);

    public BranchReading ReadBranch(TransactionState state, int branch) => machine.ReadBranch(state, branch);

    public abstract Decision Decide(TransactionState state, TransactionEvent @event, DecisionContext context);

    /// <summary>Feeds a fake 2xx for every call of <paramref name="op"/> in <paramref name="decision"/> back into the machine, so those calls are never made.</summary>
    protected Decision FakeSuccess(Decision decision, string op, DecisionContext context, string? branch = null)
    {
        while (decision.Commands.OfType<InvokeOperation>().FirstOrDefault(c => c.Op == op && (branch is null || c.BranchName == branch)) is { } skipped)
        {
            var faked = Inner.Decide(decision.Next, new OperationCompleted(skipped.Branch, skipped.Op, skipped.Attempt, BranchOutcome.Success(200, "{}")), context);
            decision = new Decision(
                faked.Next,
                [.. decision.Commands.Where(c => !ReferenceEquals(c, skipped)), .. faked.Commands],
                [.. decision.Journal, .. faked.Journal]) { WriteAhead = decision.WriteAhead && faked.WriteAhead };
        }

        return decision;
    }
}

/// <summary>Saga: marks one branch's compensation succeeded without ever calling it.</summary>
internal sealed class SkipCompensationMachine(IProtocolMachine inner, string branch) : MachineVariant(inner)
{
    public override Decision Decide(TransactionState state, TransactionEvent @event, DecisionContext context) =>
        FakeSuccess(Inner.Decide(state, @event, context), ProtocolNames.Compensate, context, branch);
}

/// <summary>3PC: every preCommit is taken as acknowledged the moment it is sent (commit before the acknowledgements).</summary>
internal sealed class FakeSuccessMachine(IProtocolMachine inner, string op) : MachineVariant(inner)
{
    public override Decision Decide(TransactionState state, TransactionEvent @event, DecisionContext context) =>
        FakeSuccess(Inner.Decide(state, @event, context), op, context);
}

/// <summary>
/// The engine bug where a timer that fired a hair before the operation was due changed nothing and
/// was never re-armed, so the retry never happened (until a coordinator restart). The engine now
/// re-arms on a no-op decision; this machine brings the bug back from outside Treaty.Core: on such
/// an early wake-up it answers a decision whose only change is that nothing is due any more, so the
/// engine persists it and disarms the timer.
/// </summary>
internal sealed class LoseEarlyWakeUpMachine(IProtocolMachine inner) : MachineVariant(inner)
{
    public override Decision Decide(TransactionState state, TransactionEvent @event, DecisionContext context)
    {
        var decision = Inner.Decide(state, @event, context);
        return @event is TimerFired && !decision.Changed(state) && state.NextWakeAt > context.Now
            ? new Decision(state with { NextWakeAt = null }, [], [])
            : decision;
    }
}

/// <summary>
/// Saga: compensates in forward dependency order (a branch before those that depend on it): it
/// decides the backward phase on a definition whose dependencies are turned around.
/// </summary>
internal sealed class ForwardOrderCompensationMachine(IProtocolMachine inner) : MachineVariant(inner)
{
    public override Decision Decide(TransactionState state, TransactionEvent @event, DecisionContext context)
    {
        var decision = Inner.Decide(state, @event, context);
        if (decision.Next.Status != TransactionStatus.Aborting && state.Status != TransactionStatus.Aborting)
        {
            return decision;
        }

        var spec = state.Spec;
        var reversed = spec with
        {
            Branches = [.. spec.Branches.Select(b => b with
            {
                DependsOn = [.. spec.Branches.Where(other => other.DependsOn.Contains(b.Name)).Select(other => other.Name)],
            })],
        };
        var turned = Inner.Decide(state with { Spec = reversed }, @event, context);
        return turned with { Next = turned.Next with { Spec = spec } };
    }
}

/// <summary>Saga, TCC, 2PC, 3PC: decides as if the transaction had no deadline, so forward ops start after it.</summary>
internal sealed class IgnoreDeadlineMachine(IProtocolMachine inner) : MachineVariant(inner)
{
    public override Decision Decide(TransactionState state, TransactionEvent @event, DecisionContext context)
    {
        var decision = Inner.Decide(state with { Deadline = null }, @event, context);
        return decision with { Next = decision.Next with { Deadline = state.Deadline } };
    }
}

/// <summary>2PC: the commit decision is not forced: the commits leave before it is durable.</summary>
internal sealed class CommitBeforeDurableMachine(IProtocolMachine inner) : MachineVariant(inner)
{
    public override Decision Decide(TransactionState state, TransactionEvent @event, DecisionContext context)
    {
        var decision = Inner.Decide(state, @event, context);
        return state.Outcome is null && decision.Next.Outcome == TransactionOutcome.Commit
            ? decision with { WriteAhead = false }
            : decision;
    }
}

/// <summary>
/// 2PC: a coordinator that restarts before deciding goes on voting instead of presuming abort: the
/// calls that were in flight are retried. With presumed abort's lazy abort writes, an abort whose
/// rollbacks left but whose write was lost is then forgotten, and the vote can end in commit.
/// </summary>
internal sealed class ResumeVotingMachine(IProtocolMachine inner) : MachineVariant(inner)
{
    public override Decision Decide(TransactionState state, TransactionEvent @event, DecisionContext context)
    {
        if (@event is not Resumed || state.Phase != ProtocolNames.Prepare || state.Outcome is not null)
        {
            return Inner.Decide(state, @event, context);
        }

        var retried = state with
        {
            Branches = [.. state.Branches.Select(b => b with
            {
                Ops = [.. b.Ops.Select(o => o.Status == OpStatus.InFlight ? o with { Status = OpStatus.Waiting, NextAttemptAt = context.Now } : o)],
            })],
        };
        return Inner.Decide(retried, new TimerFired(), context);
    }
}

/// <summary>
/// Saga: a resumed transaction takes an action its durable state shows as never started for never
/// called, although the forward step that would start it left before its write was durable; an
/// abort then leaves that action applied and never compensated.
/// </summary>
internal sealed class ForgetMaybeCalledMachine(IProtocolMachine inner) : MachineVariant(inner)
{
    public override Decision Decide(TransactionState state, TransactionEvent @event, DecisionContext context)
    {
        var decision = Inner.Decide(state, @event, context);
        if (@event is not Resumed)
        {
            return decision;
        }

        var next = decision.Next with
        {
            Branches = [.. decision.Next.Branches.Select(b => b with { Ops = [.. b.Ops.Select(o => o with { MaybeCalled = false })] })],
        };
        return decision with { Next = next };
    }
}

/// <summary>3PC: a coordinator that resumes a transaction in its preCommit phase (after a restart or a failed write) takes every preCommit as acknowledged and decides commit.</summary>
internal sealed class ResumeCommitsMachine(IProtocolMachine inner) : MachineVariant(inner)
{
    public override Decision Decide(TransactionState state, TransactionEvent @event, DecisionContext context)
    {
        if (@event is not Resumed || state.Phase != ProtocolNames.PreCommit || state.Outcome is not null)
        {
            return Inner.Decide(state, @event, context);
        }

        // Every preCommit not acknowledged yet (in flight when it crashed, waiting for a retry,
        // never sent) is taken as acknowledged.
        var acknowledged = state with
        {
            Branches = [.. state.Branches.Select(b => b.With(b.Op(ProtocolNames.PreCommit) is { Status: not OpStatus.Succeeded } op
                ? op with { Status = OpStatus.Succeeded, NextAttemptAt = null }
                : b.Op(ProtocolNames.PreCommit)))],
        };
        return Inner.Decide(acknowledged, @event, context);
    }
}

/// <summary>Rewrites the outcome of <paramref name="op"/>'s calls before the machine sees it (the flag says whether the attempt was the budget's last).</summary>
internal sealed class RewriteOutcomeMachine(IProtocolMachine inner, string op, Func<(OpState state, bool last), BranchOutcome, BranchOutcome> rewrite)
    : MachineVariant(inner)
{
    public override Decision Decide(TransactionState state, TransactionEvent @event, DecisionContext context)
    {
        if (@event is OperationCompleted completed && completed.Op == op)
        {
            var opState = completed.Branch is { } b ? state.Branches[b].TryOp(op) : state.TransactionOp(op);
            if (opState is not null)
            {
                var policy = (completed.Branch is { } i ? state.Spec.Branches[i].Retry : null) ?? state.Spec.Retry ?? RetryPolicy.Default;
                var outcome = rewrite((opState, opState.AttemptsInBudget >= policy.MaxAttempts), completed.Outcome);
                if (!ReferenceEquals(outcome, completed.Outcome))
                {
                    @event = completed with { Outcome = outcome };
                }
            }
        }

        return Inner.Decide(state, @event, context);
    }
}

/// <summary>Traces what the engine reports.</summary>
internal sealed class TraceObserver(SimScheduler scheduler) : IEngineObserver
{
    public void Submitted(TransactionState state)
    {
    }

    public void BranchCalled(TransactionState state, BranchCall call, BranchOutcome outcome, TimeSpan duration)
    {
    }

    public void Finished(TransactionState state) =>
        scheduler.Trace.Add(scheduler, SimNode.Here.Name, $"finished {state.Gid} {state.Status.ToWire()} {state.Reason}");

    public int StuckAlerts { get; private set; }

    public void Alert(TransactionState state, Alert alert)
    {
        StuckAlerts++;
        scheduler.Trace.Add(scheduler, SimNode.Here.Name, $"ALERT {alert.Kind}: {alert.Message}");
    }
}
