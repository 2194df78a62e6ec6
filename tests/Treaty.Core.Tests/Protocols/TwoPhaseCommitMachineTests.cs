using Treaty.Core.Engine;
using Treaty.Core.Model;
using Treaty.Core.Protocols;
using Treaty.Core.Tests.Support;
using static Treaty.Core.Tests.Support.ProtocolSpecs;

namespace Treaty.Core.Tests.Protocols;

public sealed class TwoPhaseCommitMachineTests
{
    private const string Prepare = ProtocolNames.Prepare;
    private const string Commit = ProtocolNames.Commit;
    private const string Rollback = ProtocolNames.Rollback;

    private static MachineRun Run(params string[] names) => new(new TwoPhaseCommitMachine(), TwoPhase(names));

    [Fact]
    public void Decide_Submitted_PreparesEveryBranchAtOnce()
    {
        var run = Run("payment", "stock");

        run.Submit().Invocations().ShouldBe(["payment.prepare#1", "stock.prepare#1"]);

        run.State.Phase.ShouldBe(Prepare);
        run.Machine.ReadBranch(run.State, 0).ShouldBe(new BranchReading("preparing", null));
    }

    [Fact]
    public void Decide_EveryVoteYes_ForcesTheCommitDecisionThenCommitsEveryBranch()
    {
        var run = Run("payment", "stock");
        run.Submit();

        var first = run.Succeed("payment", Prepare);
        first.Journal.ShouldContain(j => j.Kind == JournalKinds.Vote && j.Branch == "payment" && j.Detail == "yes");
        run.Machine.ReadBranch(run.State, 0).ShouldBe(new BranchReading("prepared", "yes"));
        var decided = run.Succeed("stock", Prepare);

        decided.WriteAhead.ShouldBeTrue(); // forced: durable before the first commit leaves
        decided.Invocations().ShouldBe(["payment.commit#1", "stock.commit#1"]);
        decided.Journal.Select(j => j.Kind).ShouldContain(JournalKinds.Committing);
        run.State.Outcome.ShouldBe(TransactionOutcome.Commit);
        run.State.Phase.ShouldBe(Commit);

        run.Succeed("payment", Commit);
        run.Succeed("stock", Commit).Commands.ShouldContain(new Finish(TransactionStatus.Committed));
        run.Machine.ReadBranch(run.State, 1).ShouldBe(new BranchReading("committed", "yes"));
    }

    [Fact]
    public void Decide_ANoVote_AbortsAtOnce_RollbacksLeaveBeforeTheWriteAndNobodyWaitsForThem()
    {
        var run = Run("payment", "stock", "coupon");
        run.Submit();
        run.Succeed("payment", Prepare);

        var no = run.Fail("stock", Prepare);

        // Presumed abort: no forced write, and the transaction is forgotten (terminal) at once.
        no.WriteAhead.ShouldBeFalse();
        no.Invocations().ShouldBeEmpty();
        no.Notifications().ShouldBe(["payment.rollback", "coupon.rollback"]); // the YES voter and the prepare still in flight
        no.Commands.ShouldContain(new Finish(TransactionStatus.Aborted));
        no.Journal.ShouldContain(j => j.Kind == JournalKinds.Vote && j.Branch == "stock" && j.Detail == "no: insufficient funds");
        run.State.Status.ShouldBe(TransactionStatus.Aborted);
        run.State.Outcome.ShouldBe(TransactionOutcome.Abort);
        run.State.Reason.ShouldBe("stock.prepare failed: insufficient funds");
        run.State.NextWakeAt.ShouldBeNull();
        run.Machine.ReadBranch(run.State, 0).ShouldBe(new BranchReading("rollback-sent", "yes"));
        run.Machine.ReadBranch(run.State, 1).ShouldBe(new BranchReading("refused", "no"));

        // The late answer of coupon's prepare finds a forgotten transaction.
        run.Succeed("coupon", Prepare).ShouldChangeNothing(run.State);
    }

    [Fact]
    public void Decide_APrepareThatNeverAnswers_IsANo()
    {
        var run = Run("payment", "stock");
        run.Submit();
        run.Succeed("payment", Prepare);
        for (var attempt = 1; attempt < Policy.MaxAttempts; attempt++)
        {
            run.Unknown("stock", Prepare);
            run.FireTimer().Invocations().ShouldBe([$"stock.prepare#{attempt + 1}"]);
        }

        var no = run.Unknown("stock", Prepare);

        no.Journal.ShouldContain(j => j.Kind == JournalKinds.Vote && j.Branch == "stock" && j.Detail!.StartsWith("no (no answer)", StringComparison.Ordinal));
        no.Notifications().ShouldBe(["payment.rollback", "stock.rollback"]); // it may have prepared
        run.State.Status.ShouldBe(TransactionStatus.Aborted);
    }

    [Fact]
    public void Decide_CommitRefused_IsRetriedUntilEveryParticipantHasIt()
    {
        var run = Run("payment");
        run.Submit();
        run.Succeed("payment", Prepare);

        run.Fail("payment", Commit);
        run.State.Status.ShouldBe(TransactionStatus.Running);
        for (var attempt = 2; attempt <= Policy.MaxAttempts; attempt++)
        {
            run.FireTimer().Invocations().ShouldBe([$"payment.commit#{attempt}"]);
            run.Unknown("payment", Commit);
        }

        run.State.StuckOn.ShouldNotBeNull().Op.ShouldBe(Commit);
        run.FireTimer().Invocations().ShouldBe([$"payment.commit#{Policy.MaxAttempts + 1}"]);
        run.Succeed("payment", Commit).Commands.ShouldContain(new Finish(TransactionStatus.Committed));
    }

    [Fact]
    public void Decide_ResumedBeforeTheDecision_PresumesAbort()
    {
        var run = Run("payment", "stock");
        run.Submit();
        run.Succeed("payment", Prepare);
        run.Succeed("stock", Prepare).Invocations().ShouldNotBeEmpty(); // decided commit ...

        var undecided = Run("payment", "stock");
        undecided.Submit();
        undecided.Succeed("payment", Prepare);

        var resumed = undecided.Send(new Resumed());

        // ... but one that restarts before deciding never commits: an abort it made may have left
        // before it was durable.
        resumed.Notifications().ShouldBe(["payment.rollback", "stock.rollback"]);
        undecided.State.Status.ShouldBe(TransactionStatus.Aborted);
        undecided.State.Reason.ShouldBe("presumed abort: the coordinator restarted before deciding");
    }

    [Fact]
    public void Decide_ResumedAfterTheCommitDecision_CommitsAgain()
    {
        var run = Run("payment", "stock");
        run.Submit();
        run.Succeed("payment", Prepare);
        run.Succeed("stock", Prepare);
        run.Succeed("payment", Commit);

        run.Send(new Resumed());
        run.State.Status.ShouldBe(TransactionStatus.Running);
        run.State.Outcome.ShouldBe(TransactionOutcome.Commit);
        run.FireTimer().Invocations().ShouldBe(["stock.commit#2"]); // the commit in flight is sent again, same key
    }

    [Fact]
    public void Decide_OperatorAbortOrDeadline_BeforeTheDecision_Abort()
    {
        var run = Run("payment", "stock");
        run.Submit();
        run.Succeed("payment", Prepare);
        run.Send(new AdminAbort("ops", null)).Notifications().ShouldBe(["payment.rollback", "stock.rollback"]);
        run.State.Status.ShouldBe(TransactionStatus.Aborted);

        var timed = new MachineRun(new TwoPhaseCommitMachine(), TwoPhase("payment") with { TimeoutMs = 500 });
        timed.Submit();
        timed.FireTimerAt(SagaSpecs.T0.AddMilliseconds(500)).Notifications().ShouldBe(["payment.rollback"]);
        timed.State.Reason.ShouldBe("transaction timed out");

        var decided = Run("payment");
        decided.Submit();
        decided.Succeed("payment", Prepare);
        decided.Machine.CanAbort(decided.State).ShouldBeFalse();
    }
}
