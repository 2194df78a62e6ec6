using Treaty.Core.Engine;
using Treaty.Core.Model;

namespace Treaty.Core.Protocols;

/// <summary>
/// Two-phase commit with presumed abort (Mohan, Lindsay, Obermarck, "Transaction Management in the
/// R* Distributed Database Management System", 1986).
/// <list type="number">
/// <item>Prepare: every branch is asked at once and votes: 2xx = YES (it holds what it needs to
/// commit, durably), a definitive 4xx = NO, no answer after its retries = NO. The transaction's
/// deadline and an operator's abort also end the vote with NO.</item>
/// <item>Commit, when every vote is YES: the decision is written (forced) before any commit leaves
/// the coordinator; commits are retried until every participant has one (stuck after their
/// budget).</item>
/// <item>Abort, on any NO: presumed abort needs no forced write — the rollbacks leave before the
/// decision is durable (a coordinator that restarts before deciding aborts anyway, see
/// <see cref="OnResumed"/>), and the coordinator forgets the transaction at once: it is aborted
/// without waiting for acknowledgements. Rollbacks are sent to every branch that may have prepared
/// and retried while the coordinator runs; a prepared participant that still hears nothing asks
/// for the outcome, and an aborted (or unknown) transaction means rollback.</item>
/// </list>
/// </summary>
public sealed class TwoPhaseCommitMachine : ProtocolMachine
{
    private const string Prepare = ProtocolNames.Prepare;
    private const string Commit = ProtocolNames.Commit;
    private const string Rollback = ProtocolNames.Rollback;

    private static readonly ProtocolShape TwoPhaseShape = new(
        BranchOperations: [Prepare, Commit, Rollback],
        RequiredOperations: [Prepare, Commit, Rollback],
        TransactionOperations: [],
        Phases: [new(Prepare, Prepare), new(Commit, Commit), new(Rollback, Rollback)],
        DependsOn: DependsOnDefault.None,
        AllowsDependsOn: false);

    /// <inheritdoc />
    public override Protocol Protocol => Protocol.TwoPhaseCommit;

    /// <inheritdoc />
    public override ProtocolShape Shape => TwoPhaseShape;

    /// <inheritdoc />
    public override bool CanAbort(TransactionState state) =>
        state.Status is TransactionStatus.Pending or TransactionStatus.Running && state.Outcome is null;

    /// <inheritdoc />
    public override BranchReading ReadBranch(TransactionState state, int branch)
    {
        var ops = state.Branches[branch];
        var prepare = ops.Op(Prepare);
        var status = (prepare.Status, ops.Op(Commit).Status, ops.Op(Rollback).Status) switch
        {
            (_, _, OpStatus.Sent) => "rollback-sent",
            (_, OpStatus.Succeeded, _) => "committed",
            (_, OpStatus.InFlight or OpStatus.Waiting, _) => "committing",
            (OpStatus.InFlight or OpStatus.Waiting, _, _) => "preparing",
            (OpStatus.Succeeded, _, _) => "prepared",
            (OpStatus.Failed, _, _) => "refused",
            (OpStatus.Exhausted, _, _) => "unknown",
            _ => "pending",
        };
        return new BranchReading(status, VoteOf(prepare));
    }

    /// <summary>YES once a vote op succeeded, NO once it failed or ran out of attempts, else none yet.</summary>
    internal static string? VoteOf(OpState vote) => vote.Status switch
    {
        OpStatus.Succeeded => "yes",
        OpStatus.Failed or OpStatus.Exhausted => "no",
        _ => null,
    };

    /// <summary>Journals a vote when it is cast.</summary>
    internal static void LogVote(TransactionStep step, int branch, OpState vote)
    {
        var name = step.Spec.Branches[branch].Name;
        step.Log(JournalKinds.Vote, name, vote.Op, vote.Status switch
        {
            OpStatus.Succeeded => "yes",
            OpStatus.Failed => $"no: {vote.LastError}",
            _ => $"no (no answer): {vote.LastError}",
        });
    }

    /// <inheritdoc />
    protected internal override Obligation ObligationOf(TransactionState state, int? branch, string op) =>
        op == Prepare ? Obligation.Tentative : Obligation.Required;

    /// <inheritdoc />
    protected internal override void OnSettled(TransactionStep step, int? branch, OpState op)
    {
        if (op.Op == Prepare)
        {
            LogVote(step, branch!.Value, op);
        }
    }

    /// <summary>
    /// A coordinator that restarts without a commit decision presumes abort: votes it collected
    /// before the crash may be stale, and an abort it had decided may have left before it was
    /// durable (the rollbacks went out first), so it must never decide commit now.
    /// </summary>
    protected internal override void OnResumed(TransactionStep step)
    {
        if (step.Phase == Prepare)
        {
            Abort(step, "presumed abort: the coordinator restarted before deciding");
        }
    }

    /// <inheritdoc />
    protected internal override void OnAbortRequested(TransactionStep step, string reason) => Abort(step, reason);

    /// <inheritdoc />
    protected internal override void Progress(TransactionStep step)
    {
        if (step.Phase == Prepare)
        {
            switch (step.CollectVotes(Prepare, out var reason))
            {
                case Tally.AllYes:
                    // Forced: this write is durable before the first commit leaves (write-ahead).
                    step.Decide(TransactionOutcome.Commit, "every participant voted yes");
                    step.EnterPhase(Commit);
                    break;
                case Tally.AnyNo:
                    Abort(step, reason);
                    break;
            }
        }

        if (step.Phase == Commit && step.DriveEveryBranch(Commit))
        {
            step.Finish(TransactionStatus.Committed);
        }
    }

    private static void Abort(TransactionStep step, string reason)
    {
        step.Decide(TransactionOutcome.Abort, reason);
        step.EnterPhase(Rollback);
        for (var i = 0; i < step.BranchCount; i++)
        {
            // A prepare in flight may still land: its rollback makes the participant refuse it (the
            // barrier's hanging prevention) or undo it.
            if (step.Op(i, Prepare).MayHaveApplied())
            {
                step.Notify(i, Rollback);
            }
        }

        step.ActBeforeDurable();
        step.Finish(TransactionStatus.Aborted);
    }
}
