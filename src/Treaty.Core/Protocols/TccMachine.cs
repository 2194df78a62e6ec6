using Treaty.Core.Engine;
using Treaty.Core.Model;

namespace Treaty.Core.Protocols;

/// <summary>
/// Try-Confirm/Cancel (Helland, "Life beyond Distributed Transactions"; Atomikos' TCC). Every
/// branch's try runs at once and reserves what the branch needs. When every try succeeded the
/// decision is commit and every branch is confirmed; otherwise (a try failed, ran out of attempts,
/// the deadline passed, or an operator aborted) the decision is abort and every try that may have
/// reserved something is cancelled. Confirm and cancel never fail for good: they are retried until
/// they succeed, and the transaction is stuck for an operator after their budget.
/// </summary>
public sealed class TccMachine : ProtocolMachine
{
    private const string Try = ProtocolNames.Try;
    private const string Confirm = ProtocolNames.Confirm;
    private const string Cancel = ProtocolNames.Cancel;

    private static readonly ProtocolShape TccShape = new(
        BranchOperations: [Try, Confirm, Cancel],
        RequiredOperations: [Try, Confirm, Cancel],
        TransactionOperations: [],
        Phases: [new(Try, Try), new(Confirm, Confirm), new(Cancel, Cancel)],
        DependsOn: DependsOnDefault.None,
        AllowsDependsOn: false);

    /// <inheritdoc />
    public override Protocol Protocol => Protocol.Tcc;

    /// <inheritdoc />
    public override ProtocolShape Shape => TccShape;

    /// <inheritdoc />
    public override bool CanAbort(TransactionState state) =>
        state.Status is TransactionStatus.Pending or TransactionStatus.Running && state.Outcome is null;

    /// <inheritdoc />
    public override BranchReading ReadBranch(TransactionState state, int branch)
    {
        var ops = state.Branches[branch];
        var status = (ops.Op(Try).Status, ops.Op(Confirm).Status, ops.Op(Cancel).Status) switch
        {
            (_, _, OpStatus.Succeeded) => "cancelled",
            (_, _, OpStatus.InFlight or OpStatus.Waiting) => "cancelling",
            (_, OpStatus.Succeeded, _) => "confirmed",
            (_, OpStatus.InFlight or OpStatus.Waiting, _) => "confirming",
            (OpStatus.InFlight or OpStatus.Waiting, _, _) => "trying",
            (OpStatus.Succeeded, _, _) => "reserved",
            (OpStatus.Failed, _, _) => "failed",
            (OpStatus.Exhausted, _, _) => "unknown",
            _ => "pending",
        };
        return new BranchReading(status, null);
    }

    /// <inheritdoc />
    protected internal override Obligation ObligationOf(TransactionState state, int? branch, string op) =>
        op == Try ? Obligation.Tentative : Obligation.Required;

    /// <inheritdoc />
    protected internal override void OnAbortRequested(TransactionStep step, string reason) => BeginCancel(step, reason);

    /// <inheritdoc />
    protected internal override void Progress(TransactionStep step)
    {
        if (step.Phase == Try)
        {
            switch (step.CollectVotes(Try, out var reason))
            {
                case Tally.AllYes:
                    step.Decide(TransactionOutcome.Commit, "every try succeeded");
                    step.EnterPhase(Confirm);
                    break;
                case Tally.AnyNo:
                    BeginCancel(step, reason);
                    break;
            }
        }

        if (step.Phase == Confirm && step.DriveEveryBranch(Confirm))
        {
            step.Finish(TransactionStatus.Committed);
        }

        // A try that failed definitively reserved nothing and needs no cancel (the participant's
        // barrier would answer one as a null cancel anyway).
        if (step.Phase == Cancel && step.UndoEveryApplied(Cancel, Try))
        {
            step.Finish(TransactionStatus.Aborted);
        }
    }

    private static void BeginCancel(TransactionStep step, string reason)
    {
        step.Decide(TransactionOutcome.Abort, reason);
        step.EnterPhase(Cancel);
    }
}
