using Treaty.Core.Engine;
using Treaty.Core.Model;

namespace Treaty.Core.Protocols;

/// <summary>
/// The two-phase message (DTM's "msg"; the reliable-message pattern without an outbox table):
/// <list type="number">
/// <item>The sender registers the message; it is <c>prepared</c> and nothing is delivered.</item>
/// <item>The sender commits its own local transaction, then submits (<see cref="SenderCommitted"/>):
/// the decision is commit and delivery starts.</item>
/// <item>If no submit comes within the transaction's <c>timeoutMs</c> (the sender may have crashed
/// between its commit and its submit), the coordinator asks the sender's <c>queryPrepared</c>:
/// 2xx — it committed, deliver; a definitive 4xx — it rolled back, abort; anything else — ask again
/// later, with backoff, never giving up (stuck after the budget).</item>
/// </list>
/// Delivery is at-least-once: every branch's <c>action</c> is retried until it succeeds (a 4xx
/// too: a committed message cannot be refused), stuck for an operator after its budget but never
/// abandoned. Branches run at once unless <c>dependsOn</c> orders them.
/// An operator's abort of a prepared message does not abort it blindly — the sender may be about
/// to commit — but asks <c>queryPrepared</c> at once: the sender's answer fences its local
/// transaction, so the message ends aborted exactly when the sender's database says so.
/// </summary>
public sealed class MessageMachine : ProtocolMachine
{
    /// <summary>How long a registered message waits for its sender's submit when no <c>timeoutMs</c> is given.</summary>
    public static readonly TimeSpan DefaultQueryAfter = TimeSpan.FromSeconds(10);

    private const string Prepared = "prepared";
    private const string Action = ProtocolNames.Action;
    private const string QueryPrepared = ProtocolNames.QueryPrepared;

    private static readonly ProtocolShape MessageShape = new(
        BranchOperations: [Action],
        RequiredOperations: [Action],
        TransactionOperations: [QueryPrepared],
        Phases: [new(Prepared, QueryPrepared), new(Action, Action)],
        DependsOn: DependsOnDefault.None,
        AllowsDependsOn: true);

    /// <inheritdoc />
    public override Protocol Protocol => Protocol.Msg;

    /// <inheritdoc />
    public override ProtocolShape Shape => MessageShape;

    /// <summary>
    /// Only while prepared: once delivery started the sender has committed and the message cannot be
    /// taken back. Even then the abort is not blind (see <see cref="OnAbortRequested"/>): the
    /// coordinator cannot know whether the sender committed — it may have committed and crashed
    /// before submitting — so it asks queryPrepared, whose answer fences a local transaction that
    /// is still open.
    /// </summary>
    public override bool CanAbort(TransactionState state) => state.Status == TransactionStatus.Prepared;

    /// <inheritdoc />
    public override BranchReading ReadBranch(TransactionState state, int branch) =>
        new(state.Branches[branch].Op(Action).Status switch
        {
            OpStatus.Succeeded => "delivered",
            OpStatus.InFlight or OpStatus.Waiting => "delivering",
            _ => "pending",
        }, null);

    /// <inheritdoc />
    protected internal override Obligation ObligationOf(TransactionState state, int? branch, string op) =>
        op == QueryPrepared ? Obligation.Decisive : Obligation.Required;

    /// <summary>Registered, not started: nothing is delivered before the sender's submit.</summary>
    protected internal override void OnSubmitted(TransactionStep step)
    {
        step.Log(JournalKinds.Registered);
        step.SetStatus(TransactionStatus.Prepared);
    }

    /// <inheritdoc />
    protected internal override bool OnSenderCommitted(TransactionStep step)
    {
        if (step.Status != TransactionStatus.Prepared)
        {
            return false;
        }

        step.Log(JournalKinds.SenderCommitted);
        Deliver(step, "the sender committed and submitted");
        return true;
    }

    /// <summary>Asks the sender now, instead of waiting for the timeout: its answer decides.</summary>
    protected internal override void OnAbortRequested(TransactionStep step, string reason)
    {
        var query = step.TransactionOp(QueryPrepared);
        if (query.Status is OpStatus.NotStarted or OpStatus.Waiting)
        {
            step.StartTransactionOp(QueryPrepared);
        }
    }

    /// <inheritdoc />
    protected internal override void Progress(TransactionStep step)
    {
        if (step.Phase == Prepared)
        {
            AwaitSender(step);
        }

        if (step.Phase == Action && DeliverDue(step))
        {
            step.Finish(TransactionStatus.Committed);
        }
    }

    private static void AwaitSender(TransactionStep step)
    {
        var query = step.TransactionOp(QueryPrepared);
        switch (query.Status)
        {
            case OpStatus.Succeeded:
                Deliver(step, "queryPrepared: the sender committed");
                return;
            case OpStatus.Failed:
                step.Decide(TransactionOutcome.Abort, $"queryPrepared: the sender rolled back ({query.LastError})");
                step.Finish(TransactionStatus.Aborted);
                return;
        }

        var askAt = step.Original.Deadline ?? step.Original.CreatedAt + DefaultQueryAfter;
        if (askAt > step.Now)
        {
            step.WakeAt(askAt);
        }
        else if (step.IsDue(query))
        {
            step.StartTransactionOp(QueryPrepared);
        }
    }

    private static void Deliver(TransactionStep step, string why)
    {
        step.SetStatus(TransactionStatus.Running);
        step.Decide(TransactionOutcome.Commit, why);
        step.EnterPhase(Action);
    }

    /// <summary>Starts every delivery that is due and whose dependencies were delivered; true once all were.</summary>
    private static bool DeliverDue(TransactionStep step)
    {
        var done = true;
        for (var i = 0; i < step.BranchCount; i++)
        {
            var action = step.Op(i, Action);
            if (action.Status == OpStatus.Succeeded)
            {
                continue;
            }

            done = false;
            if (step.IsDue(action) && step.Spec.Branches[i].DependsOn.All(d => Delivered(step, d)))
            {
                step.Start(i, Action);
            }
        }

        return done;
    }

    private static bool Delivered(TransactionStep step, string branch)
    {
        for (var i = 0; i < step.BranchCount; i++)
        {
            if (step.Spec.Branches[i].Name == branch)
            {
                return step.Op(i, Action).Status == OpStatus.Succeeded;
            }
        }

        return false;
    }
}
