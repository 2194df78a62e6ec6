using Treaty.Core.Engine;
using Treaty.Core.Model;
using Treaty.Core.Protocols;
using Treaty.Core.Tests.Support;
using static Treaty.Core.Tests.Support.ProtocolSpecs;

namespace Treaty.Core.Tests.Protocols;

public sealed class ThreePhaseCommitMachineTests
{
    private const string CanCommit = ProtocolNames.CanCommit;
    private const string PreCommit = ProtocolNames.PreCommit;
    private const string DoCommit = ProtocolNames.DoCommit;
    private const string Abort = ProtocolNames.Abort;

    private static MachineRun Run(params string[] names) => new(new ThreePhaseCommitMachine(), ThreePhase(names));

    [Fact]
    public void Decide_ThreePhases_VotesThenPreCommitThenDoCommit()
    {
        var run = Run("payment", "stock");
        run.Submit().Invocations().ShouldBe(["payment.canCommit#1", "stock.canCommit#1"]);

        run.Succeed("payment", CanCommit);
        var votes = run.Succeed("stock", CanCommit);

        votes.Invocations().ShouldBe(["payment.preCommit#1", "stock.preCommit#1"]);
        run.State.Phase.ShouldBe(PreCommit);
        run.State.Outcome.ShouldBeNull(); // not decided: a preCommit never acknowledged still aborts
        run.Machine.ReadBranch(run.State, 0).ShouldBe(new BranchReading("pre-committing", "yes"));

        run.Succeed("payment", PreCommit).Invocations().ShouldBeEmpty();
        var decided = run.Succeed("stock", PreCommit);

        decided.WriteAhead.ShouldBeTrue();
        decided.Invocations().ShouldBe(["payment.doCommit#1", "stock.doCommit#1"]);
        run.State.Outcome.ShouldBe(TransactionOutcome.Commit);
        run.State.Phase.ShouldBe(DoCommit);

        run.Succeed("payment", DoCommit);
        run.Succeed("stock", DoCommit).Commands.ShouldContain(new Finish(TransactionStatus.Committed));
        run.Machine.ReadBranch(run.State, 1).ShouldBe(new BranchReading("committed", "yes"));
    }

    [Fact]
    public void Decide_ANoVote_AbortsTheYesVoters()
    {
        var run = Run("payment", "stock");
        run.Submit();
        run.Succeed("payment", CanCommit);

        var no = run.Fail("stock", CanCommit);

        no.Invocations().ShouldBe(["payment.abort#1"]);
        no.WriteAhead.ShouldBeTrue(); // 3PC is not presumed abort
        run.State.Status.ShouldBe(TransactionStatus.Aborting);
        run.State.Phase.ShouldBe(Abort);
        run.Succeed("payment", Abort).Commands.ShouldContain(new Finish(TransactionStatus.Aborted));
        run.Machine.ReadBranch(run.State, 0).ShouldBe(new BranchReading("aborted", "yes"));
        run.Machine.ReadBranch(run.State, 1).ShouldBe(new BranchReading("voted-no", "no"));
    }

    [Fact]
    public void Decide_APreCommitNeverAcknowledged_Aborts_EvenThoseThatAcknowledged()
    {
        var run = Run("payment", "stock");
        run.Submit();
        run.Succeed("payment", CanCommit);
        run.Succeed("stock", CanCommit);
        run.Succeed("payment", PreCommit);
        for (var attempt = 1; attempt < Policy.MaxAttempts; attempt++)
        {
            run.Unknown("stock", PreCommit);
            run.FireTimer().Invocations().ShouldBe([$"stock.preCommit#{attempt + 1}"]);
        }

        var timedOut = run.Unknown("stock", PreCommit);

        timedOut.Invocations().ShouldBe(["payment.abort#1", "stock.abort#1"]);
        run.State.Reason.ShouldNotBeNull().ShouldStartWith("stock.preCommit ran out of attempts");
    }

    [Fact]
    public void Decide_OperatorAbort_AllowedUntilTheCommitDecision()
    {
        var run = Run("payment");
        run.Submit();
        run.Succeed("payment", CanCommit);
        run.Machine.CanAbort(run.State).ShouldBeTrue(); // preCommit phase: not decided yet
        run.Succeed("payment", PreCommit);
        run.Machine.CanAbort(run.State).ShouldBeFalse();
        run.Send(new AdminAbort("ops", null)).ShouldChangeNothing(run.State);
    }

    [Fact]
    public void Decide_DoCommitNeverFailsForGood()
    {
        var run = Run("payment");
        run.Submit();
        run.Succeed("payment", CanCommit);
        run.Succeed("payment", PreCommit);

        run.Fail("payment", DoCommit);
        run.FireTimer().Invocations().ShouldBe(["payment.doCommit#2"]);
        run.Succeed("payment", DoCommit).Commands.ShouldContain(new Finish(TransactionStatus.Committed));
    }
}
