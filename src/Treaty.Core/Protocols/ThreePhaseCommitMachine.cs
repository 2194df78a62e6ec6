using Treaty.Core.Engine;
using Treaty.Core.Model;

namespace Treaty.Core.Protocols;

/// <summary>
/// Three-phase commit (Skeen, "Nonblocking Commit Protocols", 1981), as the coordinator runs it:
/// <list type="number">
/// <item>canCommit: every branch votes at once (2xx = YES; a definitive 4xx, or no answer after its
/// retries, = NO). Any NO, the deadline, or an operator's abort: abort.</item>
/// <item>preCommit: every vote was YES; each branch is told the outcome will be commit and must
/// acknowledge. A preCommit that is refused or never acknowledged (after its retries), or the
/// deadline: abort — the coordinator has not decided yet.</item>
/// <item>doCommit: every preCommit was acknowledged, so the decision is commit, written before
/// the first doCommit leaves; doCommits are retried until every branch has one.</item>
/// </list>
/// Abort sends <c>abort</c> to every branch that may have voted YES, retried until acknowledged.
/// The participants' side of the protocol (Treaty.AspNetCore) adds the termination rule: a
/// participant that times out after its preCommit commits, one that times out before aborts. That
/// is what makes 3PC non-blocking when the coordinator dies — and what breaks atomicity when a
/// partition (or an outage longer than the participants' timeout) separates them.
/// </summary>
public sealed class ThreePhaseCommitMachine : ProtocolMachine
{
    private const string CanCommit = ProtocolNames.CanCommit;
    private const string PreCommit = ProtocolNames.PreCommit;
    private const string DoCommit = ProtocolNames.DoCommit;
    private const string Abort = ProtocolNames.Abort;

    private static readonly ProtocolShape ThreePhaseShape = new(
        BranchOperations: [CanCommit, PreCommit, DoCommit, Abort],
        RequiredOperations: [CanCommit, PreCommit, DoCommit, Abort],
        TransactionOperations: [],
        Phases: [new(CanCommit, CanCommit), new(PreCommit, PreCommit), new(DoCommit, DoCommit), new(Abort, Abort)],
        DependsOn: DependsOnDefault.None,
        AllowsDependsOn: false);

    /// <inheritdoc />
    public override Protocol Protocol => Protocol.ThreePhaseCommit;

    /// <inheritdoc />
    public override ProtocolShape Shape => ThreePhaseShape;

    /// <inheritdoc />
    public override bool CanAbort(TransactionState state) =>
        state.Status is TransactionStatus.Pending or TransactionStatus.Running && state.Outcome is null;

    /// <inheritdoc />
    public override BranchReading ReadBranch(TransactionState state, int branch)
    {
        var ops = state.Branches[branch];
        var vote = ops.Op(CanCommit);
        var status = (vote.Status, ops.Op(PreCommit).Status, ops.Op(DoCommit).Status, ops.Op(Abort).Status) switch
        {
            (_, _, _, OpStatus.Succeeded) => "aborted",
            (_, _, _, OpStatus.InFlight or OpStatus.Waiting) => "aborting",
            (_, _, OpStatus.Succeeded, _) => "committed",
            (_, _, OpStatus.InFlight or OpStatus.Waiting, _) => "committing",
            (_, OpStatus.Succeeded, _, _) => "pre-committed",
            (_, OpStatus.InFlight or OpStatus.Waiting, _, _) => "pre-committing",
            (_, OpStatus.Failed or OpStatus.Exhausted, _, _) => "pre-commit-refused",
            (OpStatus.InFlight or OpStatus.Waiting, _, _, _) => "voting",
            (OpStatus.Succeeded, _, _, _) => "voted-yes",
            (OpStatus.Failed or OpStatus.Exhausted, _, _, _) => "voted-no",
            _ => "pending",
        };
        return new BranchReading(status, TwoPhaseCommitMachine.VoteOf(vote));
    }

    /// <inheritdoc />
    protected internal override Obligation ObligationOf(TransactionState state, int? branch, string op) =>
        op is CanCommit or PreCommit ? Obligation.Tentative : Obligation.Required;

    /// <inheritdoc />
    protected internal override void OnSettled(TransactionStep step, int? branch, OpState op)
    {
        if (op.Op == CanCommit)
        {
            TwoPhaseCommitMachine.LogVote(step, branch!.Value, op);
        }
    }

    /// <inheritdoc />
    protected internal override void OnAbortRequested(TransactionStep step, string reason) => BeginAbort(step, reason);

    /// <inheritdoc />
    protected internal override void Progress(TransactionStep step)
    {
        if (step.Phase == CanCommit)
        {
            switch (step.CollectVotes(CanCommit, out var reason))
            {
                case Tally.AllYes:
                    step.EnterPhase(PreCommit);
                    break;
                case Tally.AnyNo:
                    BeginAbort(step, reason);
                    break;
            }
        }

        if (step.Phase == PreCommit)
        {
            switch (step.CollectVotes(PreCommit, out var reason))
            {
                case Tally.AllYes:
                    // Every participant knows the outcome will be commit: from here it is.
                    step.Decide(TransactionOutcome.Commit, "every participant acknowledged preCommit");
                    step.EnterPhase(DoCommit);
                    break;
                case Tally.AnyNo:
                    BeginAbort(step, reason);
                    break;
            }
        }

        if (step.Phase == DoCommit && step.DriveEveryBranch(DoCommit))
        {
            step.Finish(TransactionStatus.Committed);
        }

        if (step.Phase == Abort && step.UndoEveryApplied(Abort, CanCommit, PreCommit))
        {
            step.Finish(TransactionStatus.Aborted);
        }
    }

    private static void BeginAbort(TransactionStep step, string reason)
    {
        step.Decide(TransactionOutcome.Abort, reason);
        step.EnterPhase(Abort);
    }
}
