using Treaty.Core.Model;
using Treaty.Core.Protocols;
using Treaty.Core.Tests.Support;
using static Treaty.Core.Tests.Support.ProtocolSpecs;

namespace Treaty.Core.Tests.Protocols;

public sealed class TccMachineTests
{
    private const string Try = ProtocolNames.Try;
    private const string Confirm = ProtocolNames.Confirm;
    private const string Cancel = ProtocolNames.Cancel;

    private static MachineRun Run(params string[] names) => new(new TccMachine(), Tcc(names));

    [Fact]
    public void Decide_Submitted_TriesEveryBranchAtOnce()
    {
        var run = Run("payment", "stock");

        run.Submit().Invocations().ShouldBe(["payment.try#1", "stock.try#1"]);

        run.State.Status.ShouldBe(TransactionStatus.Running);
        run.State.Phase.ShouldBe(Try);
        run.State.Outcome.ShouldBeNull();
    }

    [Fact]
    public void Decide_EveryTrySucceeded_DecidesCommitAndConfirmsEveryBranchThenCommits()
    {
        var run = Run("payment", "stock");
        run.Submit();

        run.Succeed("payment", Try).Invocations().ShouldBeEmpty();
        var decided = run.Succeed("stock", Try);

        decided.Invocations().ShouldBe(["payment.confirm#1", "stock.confirm#1"]);
        decided.Journal.ShouldContain(j => j.Kind == JournalKinds.Committing);
        decided.WriteAhead.ShouldBeTrue(); // the decision is durable before any confirm leaves
        run.State.Outcome.ShouldBe(TransactionOutcome.Commit);
        run.State.Phase.ShouldBe(Confirm);
        run.State.Status.ShouldBe(TransactionStatus.Running);
        run.Machine.ReadBranch(run.State, 0).Status.ShouldBe("confirming");

        run.Succeed("payment", Confirm).Commands.ShouldNotContain(c => c is Finish);
        run.Succeed("stock", Confirm).Commands.ShouldContain(new Finish(TransactionStatus.Committed));
        run.State.Status.ShouldBe(TransactionStatus.Committed);
        run.Machine.ReadBranch(run.State, 1).Status.ShouldBe("confirmed");
    }

    [Fact]
    public void Decide_ATryFails_CancelsOnlyTheTriesThatReserved()
    {
        var run = Run("payment", "stock", "coupon");
        run.Submit();
        run.Succeed("payment", Try);

        var failed = run.Fail("stock", Try);

        // coupon's try is still in flight: its answer says whether there is anything to cancel.
        failed.Invocations().ShouldBe(["payment.cancel#1"]);
        run.State.Status.ShouldBe(TransactionStatus.Aborting);
        run.State.Phase.ShouldBe(Cancel);
        run.State.Outcome.ShouldBe(TransactionOutcome.Abort);
        run.State.Reason.ShouldBe("stock.try failed: insufficient funds");

        run.Succeed("coupon", Try).Invocations().ShouldBe(["coupon.cancel#1"]); // the late try reserved: cancel it
        run.Succeed("payment", Cancel);
        var done = run.Succeed("coupon", Cancel);

        done.Commands.ShouldContain(new Finish(TransactionStatus.Aborted));
        run.Op("stock", Cancel).Status.ShouldBe(OpStatus.NotStarted); // a definitive failure reserved nothing
        run.Machine.ReadBranch(run.State, 0).Status.ShouldBe("cancelled");
        run.Machine.ReadBranch(run.State, 1).Status.ShouldBe("failed");
    }

    [Fact]
    public void Decide_ATryNeverAnswers_IsCancelledToo()
    {
        var run = Run("payment", "stock");
        run.Submit();
        run.Succeed("payment", Try);
        for (var attempt = 1; attempt < Policy.MaxAttempts; attempt++)
        {
            run.Unknown("stock", Try);
            run.FireTimer().Invocations().ShouldBe([$"stock.try#{attempt + 1}"]);
        }

        var exhausted = run.Unknown("stock", Try);

        exhausted.Invocations().ShouldBe(["payment.cancel#1", "stock.cancel#1"]);
        run.State.Reason.ShouldNotBeNull().ShouldStartWith("stock.try ran out of attempts");
        run.Machine.ReadBranch(run.State, 1).Status.ShouldBe("cancelling");
    }

    [Fact]
    public void Decide_ConfirmRefused_IsRetriedUntilItSucceeds_StuckAfterTheBudget()
    {
        var run = Run("payment");
        run.Submit();
        run.Succeed("payment", Try);

        run.Fail("payment", Confirm); // a confirm can never fail for good
        run.Op("payment", Confirm).Status.ShouldBe(OpStatus.Waiting);
        run.FireTimer().Invocations().ShouldBe(["payment.confirm#2"]);
        run.Unknown("payment", Confirm);
        run.FireTimer().Invocations().ShouldBe(["payment.confirm#3"]);
        var stuck = run.Unknown("payment", Confirm);

        run.State.Stuck.ShouldBeTrue();
        run.State.StuckOn.ShouldBe(new StuckCause("payment", Confirm, 3, 503, "service unavailable"));
        stuck.Commands.OfType<Alert>().ShouldHaveSingleItem();
        run.State.Status.ShouldBe(TransactionStatus.Running);

        run.FireTimer().Invocations().ShouldBe(["payment.confirm#4"]); // still retried, at the cap
        run.Succeed("payment", Confirm).Commands.ShouldContain(new Finish(TransactionStatus.Committed));
        run.State.Stuck.ShouldBeFalse();
    }

    [Fact]
    public void Decide_CancelNeverSucceeds_MarksStuckButNeverGivesUp()
    {
        var run = Run("payment", "stock");
        run.Submit();
        run.Succeed("payment", Try);
        run.Fail("stock", Try);
        for (var i = 0; i < Policy.MaxAttempts - 1; i++)
        {
            run.Unknown("payment", Cancel);
            run.FireTimer();
        }

        run.Unknown("payment", Cancel);

        run.State.StuckOn.ShouldNotBeNull().Op.ShouldBe(Cancel);
        run.State.Status.ShouldBe(TransactionStatus.Aborting);
        run.FireTimer().Invocations().ShouldBe([$"payment.cancel#{Policy.MaxAttempts + 1}"]);
    }

    [Fact]
    public void Decide_DeadlineBeforeTheDecision_Cancels_AfterIt_ChangesNothing()
    {
        var early = new MachineRun(new TccMachine(), Tcc("payment", "stock") with { TimeoutMs = 1_000 });
        early.Submit();
        early.Succeed("payment", Try);
        early.State.NextWakeAt.ShouldBe(SagaSpecs.T0.AddSeconds(1));

        // stock's try is still in flight: only its answer says whether it needs a cancel.
        early.FireTimerAt(SagaSpecs.T0.AddSeconds(1)).Invocations().ShouldBe(["payment.cancel#1"]);
        early.State.Reason.ShouldBe("transaction timed out");
        early.Succeed("stock", Try).Invocations().ShouldBe(["stock.cancel#1"]);

        var late = new MachineRun(new TccMachine(), Tcc("payment") with { TimeoutMs = 1_000 });
        late.Submit();
        late.Succeed("payment", Try);
        late.FireTimerAt(SagaSpecs.T0.AddSeconds(5));
        late.State.Phase.ShouldBe(Confirm);
        late.State.Status.ShouldBe(TransactionStatus.Running);
    }

    [Fact]
    public void Decide_OperatorAbort_BeforeTheDecisionCancels_AfterItIsRefused()
    {
        var run = Run("payment", "stock");
        run.Submit();
        run.Succeed("payment", Try);
        run.Machine.CanAbort(run.State).ShouldBeTrue();

        run.Send(new AdminAbort("alice", "customer called"));
        run.State.Reason.ShouldBe("aborted by operator alice: customer called");
        run.State.Phase.ShouldBe(Cancel);

        var decided = Run("payment");
        decided.Submit();
        decided.Succeed("payment", Try);
        decided.Machine.CanAbort(decided.State).ShouldBeFalse();
        decided.Send(new AdminAbort("alice", null)).ShouldChangeNothing(decided.State);
    }
}
