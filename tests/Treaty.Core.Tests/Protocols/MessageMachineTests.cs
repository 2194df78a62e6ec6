using Treaty.Core.Model;
using Treaty.Core.Protocols;
using Treaty.Core.Tests.Support;
using static Treaty.Core.Tests.Support.ProtocolSpecs;

namespace Treaty.Core.Tests.Protocols;

public sealed class MessageMachineTests
{
    private const string Action = ProtocolNames.Action;
    private const string QueryPrepared = ProtocolNames.QueryPrepared;

    private static MachineRun Run(params string[] names) => new(new MessageMachine(), Message(names));

    [Fact]
    public void Decide_Submitted_RegistersWithoutDelivering_AndWaitsForTheSender()
    {
        var run = Run("points", "mail");

        var registered = run.Submit();

        registered.Invocations().ShouldBeEmpty();
        registered.Journal.Select(j => j.Kind).ShouldBe([JournalKinds.Registered]);
        run.State.Status.ShouldBe(TransactionStatus.Prepared);
        run.State.Phase.ShouldBe("prepared");
        run.State.NextWakeAt.ShouldBe(SagaSpecs.T0 + MessageMachine.DefaultQueryAfter);
        run.State.Ops.ShouldHaveSingleItem().Op.ShouldBe(QueryPrepared);
    }

    [Fact]
    public void Decide_SenderCommitted_DeliversEveryBranchUntilEachAcknowledges()
    {
        var run = Run("points", "mail");
        run.Submit();

        var submitted = run.Send(new SenderCommitted());

        submitted.Invocations().ShouldBe(["points.action#1", "mail.action#1"]);
        run.State.Status.ShouldBe(TransactionStatus.Running);
        run.State.Outcome.ShouldBe(TransactionOutcome.Commit);
        run.Send(new SenderCommitted()).ShouldChangeNothing(run.State); // a repeated submit

        run.Fail("points"); // a delivered message cannot be refused: retried
        run.Succeed("mail");
        run.FireTimer().Invocations().ShouldBe(["points.action#2"]);
        run.Succeed("points").Commands.ShouldContain(new Finish(TransactionStatus.Committed));
        run.Machine.ReadBranch(run.State, 0).Status.ShouldBe("delivered");
    }

    [Fact]
    public void Decide_NoSubmitInTime_AsksQueryPrepared_CommittedMeansDeliver()
    {
        var run = new MachineRun(new MessageMachine(), Message("points") with { TimeoutMs = 2_000 });
        run.Submit();
        run.State.NextWakeAt.ShouldBe(SagaSpecs.T0.AddSeconds(2));

        run.FireTimerAt(SagaSpecs.T0.AddSeconds(1)).ShouldChangeNothing(run.State); // too early
        run.FireTimer().Invocations().ShouldBe(["queryPrepared#1"]);

        var answered = run.CompleteTransactionOp(QueryPrepared, BranchOutcome.Success(200, null));

        answered.Invocations().ShouldBe(["points.action#1"]);
        run.State.Status.ShouldBe(TransactionStatus.Running);
    }

    [Fact]
    public void Decide_QueryPreparedSaysRolledBack_Aborts()
    {
        var run = Run("points");
        run.Submit();
        run.FireTimer();

        run.CompleteTransactionOp(QueryPrepared, BranchOutcome.Failure(404, "no such order")).Commands.ShouldContain(new Finish(TransactionStatus.Aborted));

        run.State.Reason.ShouldNotBeNull().ShouldStartWith("queryPrepared: the sender rolled back");
        run.Op("points").Status.ShouldBe(OpStatus.NotStarted); // nothing was delivered
    }

    [Fact]
    public void Decide_QueryPreparedUnanswered_AsksAgainForever_StuckAfterTheBudget()
    {
        var run = Run("points");
        run.Submit();
        run.FireTimer();
        for (var attempt = 1; attempt < Policy.MaxAttempts; attempt++)
        {
            run.CompleteTransactionOp(QueryPrepared, BranchOutcome.Unknown(503, "sender down"));
            run.FireTimer().Invocations().ShouldBe([$"queryPrepared#{attempt + 1}"]);
        }

        var stuck = run.CompleteTransactionOp(QueryPrepared, BranchOutcome.Unknown(503, "sender down"));

        stuck.Commands.OfType<Alert>().ShouldHaveSingleItem();
        run.State.StuckOn.ShouldBe(new StuckCause(null, QueryPrepared, Policy.MaxAttempts, 503, "sender down"));
        run.State.Status.ShouldBe(TransactionStatus.Prepared);
        run.FireTimer().Invocations().ShouldBe([$"queryPrepared#{Policy.MaxAttempts + 1}"]);

        // The sender's late submit still delivers; the answer of the query in flight is then moot.
        run.Send(new SenderCommitted()).Invocations().ShouldBe(["points.action#1"]);
        run.State.Stuck.ShouldBeFalse();
    }

    [Fact]
    public void Decide_DependsOn_OrdersDelivery()
    {
        var spec = Message("ledger", "mail");
        spec = spec with { Branches = spec.Branches.SetItem(1, spec.Branches[1] with { DependsOn = ["ledger"] }) };
        var run = new MachineRun(new MessageMachine(), spec);
        run.Submit();

        run.Send(new SenderCommitted()).Invocations().ShouldBe(["ledger.action#1"]);
        run.Succeed("ledger").Invocations().ShouldBe(["mail.action#1"]);
    }

    [Fact]
    public void Decide_OperatorAbort_AsksTheSenderAtOnce_AndItsAnswerDecides()
    {
        // Found by the deterministic simulation and the client SDK's tests: a blind abort of a
        // prepared message lost the message of a sender that had committed but not yet submitted.
        // While prepared, only queryPrepared (which fences a local transaction still open) can tell.
        var run = Run("points");
        run.Submit();

        // Not a blind abort: the sender may be committing; its answer fences its local transaction.
        run.Send(new AdminAbort("ops", "never sent")).Invocations().ShouldBe(["queryPrepared#1"]);
        run.State.Status.ShouldBe(TransactionStatus.Prepared);
        run.CompleteTransactionOp(QueryPrepared, BranchOutcome.Failure(409, "rolled back")).Commands.ShouldContain(new Finish(TransactionStatus.Aborted));

        var committed = Run("points");
        committed.Submit();
        committed.Send(new AdminAbort("ops", null));
        committed.CompleteTransactionOp(QueryPrepared, BranchOutcome.Success(200, null)).Invocations().ShouldBe(["points.action#1"]);
    }

    [Fact]
    public void Decide_OperatorAbort_OnlyWhilePrepared()
    {
        var delivering = Run("points");
        delivering.Submit();
        delivering.Send(new SenderCommitted());
        delivering.Machine.CanAbort(delivering.State).ShouldBeFalse();
    }
}
