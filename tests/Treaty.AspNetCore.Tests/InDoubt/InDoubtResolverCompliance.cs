using Treaty.AspNetCore.Barrier;
using Treaty.AspNetCore.InDoubt;
using Treaty.AspNetCore.Tests.Barrier;
using Treaty.AspNetCore.Tests.Support;

namespace Treaty.AspNetCore.Tests.InDoubt;

/// <summary>
/// The prepared state and the in-doubt resolver, against every participant database
/// (<see cref="SqliteInDoubtResolverTests"/>, <see cref="PostgreSqlInDoubtResolverTests"/>): a
/// participant on real Kestrel, a hand-written coordinator that answers as scripted, and a manual
/// clock, so every pass of the resolver is one the test runs.
/// </summary>
public abstract class InDoubtResolverCompliance : IAsyncLifetime
{
    private static readonly TimeSpan After = TimeSpan.FromSeconds(30);
    private TestDatabase _database = null!;

    protected ManualTimeProvider Time { get; } = new();

    protected FakeCoordinator Coordinator { get; private set; } = null!;

    protected InDoubtParticipant Participant { get; private set; } = null!;

    /// <summary>The participant's kit log lines (every level), with their scopes.</summary>
    protected CapturingLoggerProvider Logs { get; } = new();

    protected abstract Task<TestDatabase> CreateDatabaseAsync();

    public async Task InitializeAsync()
    {
        _database = await CreateDatabaseAsync();
        Coordinator = await FakeCoordinator.StartAsync();
        Participant = await InDoubtParticipant.StartAsync(Setup(Coordinator.BaseAddress));
    }

    public async Task DisposeAsync()
    {
        if (Participant is not null)
        {
            await Participant.DisposeAsync();
        }

        if (Coordinator is not null)
        {
            await Coordinator.DisposeAsync();
        }

        if (_database is not null)
        {
            await _database.DisposeAsync();
        }
    }

    private ParticipantSetup Setup(Uri coordinator) => new(_database.Database, Time) { Coordinator = coordinator, After = After, Logs = Logs };

    /// <summary>Stops the participant and starts a new one on the same database (a restart after a crash).</summary>
    private async Task RestartAsync(Uri? coordinator = null)
    {
        await Participant.DisposeAsync();
        Participant = null!;
        Participant = await InDoubtParticipant.StartAsync(Setup(coordinator ?? Coordinator.BaseAddress));
    }

    private static string NewGid() => "g-" + Guid.NewGuid().ToString("N");

    private async Task VoteAsync(string gid, params string[] ops)
    {
        foreach (var op in ops)
        {
            (await Participant.CallAsync(gid, op)).Status.ShouldBe(200, op);
        }
    }

    [Fact]
    public async Task PreparedState_SurvivesARestart_StillHoldingItsReservation_UntilTheOutcome()
    {
        var gid = NewGid();
        await VoteAsync(gid, "prepare");
        (await Participant.HoldAsync(gid)).ShouldBe("held");
        (await Participant.AvailableAsync()).ShouldBe(InDoubtParticipant.InitialStock - 1);

        await RestartAsync();

        (await Participant.HoldAsync(gid)).ShouldBe("held");
        (await Participant.AvailableAsync()).ShouldBe(InDoubtParticipant.InitialStock - 1);
        (await Participant.PreparedAsync(gid)).ShouldNotBeNull().Stage.ShouldBe("prepared");

        // The outcome reaches the restarted participant through the resolver, with the same handler.
        Coordinator.Says(gid, "aborted", "abort");
        Time.Advance(After);
        var pass = await Participant.ResolveAsync();

        pass.ShouldHaveSingleItem().ShouldBe(new InDoubtResolution(gid, "b1", PreparedStage.Prepared, CoordinatorAnswer.Abort, InDoubtAction.Abort, InDoubtResult.Resolved, BarrierDecision.RunHandler));
        Participant.RanByResolver(gid, "rollback").ShouldBeTrue();
        (await Participant.HoldAsync(gid)).ShouldBeNull();
        (await Participant.AvailableAsync()).ShouldBe(InDoubtParticipant.InitialStock);
        (await Participant.PreparedAsync(gid)).ShouldBeNull();
    }

    [Fact]
    public async Task Votes_EnterThePreparedTableWithTheirStage_AndTheOutcomeOpRemovesIt()
    {
        var twoPhase = NewGid();
        var threePhase = NewGid();
        var refused = NewGid();

        await VoteAsync(twoPhase, "prepare");
        await VoteAsync(threePhase, "canCommit");
        (await Participant.PreparedAsync(twoPhase)).ShouldNotBeNull().Stage.ShouldBe("prepared");
        (await Participant.PreparedAsync(threePhase)).ShouldNotBeNull().Stage.ShouldBe("voted");
        await VoteAsync(threePhase, "preCommit");
        (await Participant.PreparedAsync(threePhase)).ShouldNotBeNull().Stage.ShouldBe("pre-committed");
        (await Participant.CallAsync(refused, "prepare", """{"fail":true}""")).Status.ShouldBe(409);
        (await Participant.PreparedAsync(refused)).ShouldBeNull();

        await VoteAsync(twoPhase, "commit");
        await VoteAsync(threePhase, "doCommit");

        (await Participant.PreparedAsync(twoPhase)).ShouldBeNull();
        (await Participant.PreparedAsync(threePhase)).ShouldBeNull();
        (await Participant.HoldAsync(threePhase)).ShouldBe("committed");
    }

    [Fact]
    public async Task Resolver_BeforeAfterHasPassed_AsksNothing()
    {
        var gid = NewGid();
        await VoteAsync(gid, "prepare");

        Time.Advance(After - TimeSpan.FromSeconds(1));

        (await Participant.ResolveAsync()).ShouldBeEmpty();
        Coordinator.Asked(gid).ShouldBe(0);
    }

    [Fact]
    public async Task TwoPhase_UnknownGid_IsPresumedAbort_RollsBack()
    {
        var gid = NewGid();
        await VoteAsync(gid, "prepare");

        Time.Advance(After);
        var resolution = (await Participant.ResolveAsync()).ShouldHaveSingleItem();

        resolution.Answer.ShouldBe(CoordinatorAnswer.UnknownTransaction);
        resolution.Result.ShouldBe(InDoubtResult.Resolved);
        Participant.Runs(gid, "rollback").ShouldBe(1);
        (await Participant.HoldAsync(gid)).ShouldBeNull();
        (await Participant.PreparedAsync(gid)).ShouldBeNull();

        // the coordinator's own rollback, should it still come, changes nothing
        (await Participant.CallAsync(gid, "rollback")).Outcome.ShouldBe("replayed");
        Participant.Runs(gid, "rollback").ShouldBe(1);
    }

    [Fact]
    public async Task TwoPhase_CoordinatorUnreachable_WaitsThroughSeveralChecks_StillPrepared()
    {
        await RestartAsync(FakeCoordinator.Unreachable());
        var gid = NewGid();
        await VoteAsync(gid, "prepare");
        Time.Advance(After);

        var delays = new[] { TimeSpan.FromSeconds(5), TimeSpan.FromSeconds(10), TimeSpan.FromSeconds(20), TimeSpan.FromSeconds(40) };
        for (var check = 0; check < delays.Length; check++)
        {
            var resolution = (await Participant.ResolveAsync()).ShouldHaveSingleItem();
            resolution.Answer.ShouldBe(CoordinatorAnswer.Unreachable);
            resolution.Action.ShouldBe(InDoubtAction.Wait);
            (await Participant.PreparedAsync(gid)).ShouldNotBeNull().Checks.ShouldBe(check + 1);

            // not asked again before the backoff has passed
            Time.Advance(delays[check] - TimeSpan.FromMilliseconds(1));
            (await Participant.ResolveAsync()).ShouldBeEmpty();
            Time.Advance(TimeSpan.FromMilliseconds(1));
        }

        Participant.Runs(gid, "rollback").ShouldBe(0);
        Participant.Runs(gid, "commit").ShouldBe(0);
        (await Participant.HoldAsync(gid)).ShouldBe("held");
    }

    [Theory]
    [InlineData("undecided")]
    [InlineData("503")]
    [InlineData("plain 404")]
    public async Task TwoPhase_NoDecisionFromTheCoordinator_Waits(string how)
    {
        var gid = NewGid();
        await VoteAsync(gid, "prepare");
        switch (how)
        {
            case "undecided":
                Coordinator.Says(gid, "running");
                break;
            case "503":
                Coordinator.Fails(gid, 503);
                break;
            default:
                // a 404 that is not the coordinator's own (a wrong URL, a proxy) is no proof of "no record"
                Coordinator.Fails(gid, 404);
                break;
        }

        Time.Advance(After);
        var resolution = (await Participant.ResolveAsync()).ShouldHaveSingleItem();

        resolution.Action.ShouldBe(InDoubtAction.Wait);
        resolution.Answer.ShouldBe(how == "undecided" ? CoordinatorAnswer.Undecided : CoordinatorAnswer.Unreachable);
        (await Participant.HoldAsync(gid)).ShouldBe("held");
    }

    [Fact]
    public async Task ThreePhase_CoordinatorUnreachable_PastPreCommitCommits_BeforePreCommitAborts()
    {
        await RestartAsync(FakeCoordinator.Unreachable());
        var preCommitted = NewGid();
        var voted = NewGid();
        await VoteAsync(preCommitted, "canCommit", "preCommit");
        await VoteAsync(voted, "canCommit");

        Time.Advance(After);
        var pass = await Participant.ResolveAsync();

        pass.Single(r => r.Gid == preCommitted).ShouldBe(new InDoubtResolution(preCommitted, "b1", PreparedStage.PreCommitted, CoordinatorAnswer.Unreachable, InDoubtAction.Commit, InDoubtResult.Resolved, BarrierDecision.RunHandler));
        pass.Single(r => r.Gid == voted).ShouldBe(new InDoubtResolution(voted, "b1", PreparedStage.Voted, CoordinatorAnswer.Unreachable, InDoubtAction.Abort, InDoubtResult.Resolved, BarrierDecision.RunHandler));
        (await Participant.HoldAsync(preCommitted)).ShouldBe("committed");
        (await Participant.HoldAsync(voted)).ShouldBeNull();
        Participant.Runs(preCommitted, "doCommit").ShouldBe(1);
        Participant.Runs(voted, "abort").ShouldBe(1);
    }

    [Fact]
    public async Task ThreePhase_TerminationRuleUnderAPartition_TheCoordinatorsLaterAbortIsRefusedAsAConflict()
    {
        // The danger of 3PC's termination rule: cut off from the coordinator after preCommit, the
        // participant commits alone; the coordinator, missing another acknowledgement, aborts.
        // The barrier refuses to undo a committed branch and says so (409), for an operator.
        await RestartAsync(FakeCoordinator.Unreachable());
        var gid = NewGid();
        await VoteAsync(gid, "canCommit", "preCommit");
        Time.Advance(After);
        (await Participant.ResolveAsync()).ShouldHaveSingleItem().Action.ShouldBe(InDoubtAction.Commit);

        var abort = await Participant.CallAsync(gid, "abort");
        var again = await Participant.CallAsync(gid, "abort");

        abort.Status.ShouldBe(409);
        abort.Outcome.ShouldBe("conflict");
        abort.Body.ShouldContain(TreatyBarrier.OutcomeConflictType);
        again.Status.ShouldBe(409); // not recorded: every retry hears it, so the coordinator marks it stuck
        Participant.Runs(gid, "abort").ShouldBe(0);
        (await Participant.HoldAsync(gid)).ShouldBe("committed");
    }

    [Fact]
    public async Task DecisionCommit_CommitsLocally_AndTheCoordinatorsLaterCommitIsAReplay()
    {
        var gid = NewGid();
        await VoteAsync(gid, "prepare");
        Coordinator.Says(gid, "running", "commit");

        Time.Advance(After);
        var resolution = (await Participant.ResolveAsync()).ShouldHaveSingleItem();
        var late = await Participant.CallAsync(gid, "commit");

        resolution.Action.ShouldBe(InDoubtAction.Commit);
        resolution.Result.ShouldBe(InDoubtResult.Resolved);
        late.Status.ShouldBe(200);
        late.Outcome.ShouldBe("replayed");
        Participant.Runs(gid, "commit").ShouldBe(1);
        Participant.RanByResolver(gid, "commit").ShouldBeTrue();
        (await Participant.HoldAsync(gid)).ShouldBe("committed");
        (await Participant.PreparedAsync(gid)).ShouldBeNull();
    }

    [Fact]
    public async Task CoordinatorsCommitBeforeThePass_LeavesNothingToResolve()
    {
        var gid = NewGid();
        await VoteAsync(gid, "prepare", "commit");
        Coordinator.Says(gid, "committed", "commit");

        Time.Advance(After);

        (await Participant.ResolveAsync()).ShouldBeEmpty();
        Participant.Runs(gid, "commit").ShouldBe(1);
    }

    [Fact]
    public async Task ResolverRunningTheOutcome_ACoordinatorCallArrivingMeanwhile_WaitsAndIsAReplay()
    {
        var gid = NewGid();
        await VoteAsync(gid, "prepare");
        Coordinator.Says(gid, "running", "commit");
        Participant.Delay("commit", TimeSpan.FromMilliseconds(300)); // the resolver holds the branch a while
        Time.Advance(After);

        var pass = Participant.ResolveAsync();
        await WaitUntilAsync(() => Participant.Runs(gid, "commit") == 1);
        var call = await Participant.CallAsync(gid, "commit");

        (await pass).ShouldHaveSingleItem().Result.ShouldBe(InDoubtResult.Resolved);
        call.Status.ShouldBe(200);
        call.Outcome.ShouldBe("replayed");
        Participant.Runs(gid, "commit").ShouldBe(1);
        (await Participant.HoldAsync(gid)).ShouldBe("committed");
    }

    [Fact]
    public async Task CoordinatorCallRunningTheOutcome_TheResolverArrivingMeanwhile_RunsNothing()
    {
        var gid = NewGid();
        await VoteAsync(gid, "prepare");
        var hold = Coordinator.Hold(gid);
        Coordinator.Says(gid, "running", "commit");
        Participant.Delay("commit", TimeSpan.FromMilliseconds(300));
        Time.Advance(After);

        var pass = Participant.ResolveAsync(); // reads the branch, then waits for the coordinator's answer
        await WaitUntilAsync(() => Coordinator.Asked(gid) == 1);
        var call = Participant.CallAsync(gid, "commit");
        await WaitUntilAsync(() => Participant.Runs(gid, "commit") == 1);
        hold.SetResult(); // the resolver decides commit while the coordinator's call is running it

        (await pass).ShouldHaveSingleItem().Result.ShouldBe(InDoubtResult.Superseded);
        (await call).Outcome.ShouldBe("executed");
        Participant.Runs(gid, "commit").ShouldBe(1);
        Participant.RanByResolver(gid, "commit").ShouldBeFalse();
        (await Participant.HoldAsync(gid)).ShouldBe("committed");
    }

    private static async Task WaitUntilAsync(Func<bool> condition)
    {
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(20));
        while (!condition())
        {
            await Task.Delay(5, timeout.Token);
        }
    }

    [Fact]
    public async Task ThreePhase_PreCommitArrivingWhileTheResolverAsks_IsNotAbortedOnTheStaleStage()
    {
        var gid = NewGid();
        await VoteAsync(gid, "canCommit");
        var hold = Coordinator.Hold(gid);
        Coordinator.Fails(gid, 503); // once released: no answer, so at "voted" the rule says abort
        Time.Advance(After);

        var pass = Participant.ResolveAsync();
        await WaitUntilAsync(() => Coordinator.Asked(gid) == 1);

        await VoteAsync(gid, "preCommit"); // the coordinator got through meanwhile
        hold.SetResult();
        var resolution = (await pass).ShouldHaveSingleItem();

        resolution.Action.ShouldBe(InDoubtAction.Abort);
        resolution.Result.ShouldBe(InDoubtResult.Superseded);
        Participant.Runs(gid, "abort").ShouldBe(0);
        (await Participant.HoldAsync(gid)).ShouldBe("pre-committed");
        (await Participant.PreparedAsync(gid)).ShouldNotBeNull().Stage.ShouldBe("pre-committed");
    }

    [Fact]
    public async Task LocalOutcomeThatFails_StaysInDoubt_AndIsRunAgainAtTheNextCheck()
    {
        var gid = NewGid();
        await VoteAsync(gid, "prepare");
        Coordinator.Says(gid, "aborted", "abort");
        Participant.ThrowOnce("rollback");
        Time.Advance(After);

        (await Participant.ResolveAsync()).ShouldHaveSingleItem().Result.ShouldBe(InDoubtResult.Failed);
        (await Participant.HoldAsync(gid)).ShouldBe("held"); // the failed run's writes rolled back
        (await Participant.PreparedAsync(gid)).ShouldNotBeNull().Checks.ShouldBe(1);

        Time.Advance(TimeSpan.FromSeconds(5));
        (await Participant.ResolveAsync()).ShouldHaveSingleItem().Result.ShouldBe(InDoubtResult.Resolved);
        Participant.Runs(gid, "rollback").ShouldBe(2);
        (await Participant.HoldAsync(gid)).ShouldBeNull();
    }

    [Fact]
    public async Task ResolverLogs_AboutABranch_CarryItsGidScope_OncePerLine()
    {
        // One pass over five gids, each ending differently, so a scope leaking from one branch to
        // the next would show: still in doubt (undecided), no answer (503), resolved (abort, through
        // the barrier), the 3PC termination rule (no record after preCommit), an unmapped endpoint.
        var undecided = NewGid();
        var unreachable = NewGid();
        var aborted = NewGid();
        var terminated = NewGid();
        var unmapped = NewGid();
        await VoteAsync(undecided, "prepare");
        await VoteAsync(unreachable, "prepare");
        await VoteAsync(aborted, "prepare");
        await VoteAsync(terminated, "canCommit", "preCommit");
        await VoteAsync(unmapped, "prepare");
        Coordinator.Says(undecided, "running");
        Coordinator.Fails(unreachable, 503);
        Coordinator.Says(aborted, "aborted", "abort");
        Coordinator.Says(unmapped, "aborted", "abort");
        await using (var transaction = await Participant.Database.BeginAsync(CancellationToken.None))
        {
            await using var move = transaction.CreateCommand("UPDATE treaty_prepared SET endpoint = '/v0/branch' WHERE gid = @gid", ("gid", unmapped));
            await move.ExecuteNonQueryAsync();
            await transaction.CommitAsync(CancellationToken.None);
        }

        Time.Advance(After);
        var before = Logs.Logs.Count;
        (await Participant.ResolveAsync()).Count.ShouldBe(5);
        var pass = Logs.Logs.Skip(before).ToList();

        string[] gids = [undecided, unreachable, aborted, terminated, unmapped];
        // 4402 resolved, 4403 still in doubt, 4404 termination rule, 4408 unknown endpoint, 4410 no answer; 42xx the barrier
        new[] { 4402, 4403, 4404, 4408, 4410 }.ShouldBeSubsetOf(pass.Select(l => l.EventId.Id));
        pass.ShouldContain(l => l.EventId.Id >= 4201 && l.EventId.Id <= 4249, "the barrier's line of the outcome run here");
        CapturedLog.ShouldEachBeInTheScopeOfTheGidTheyName(pass, gids);
    }

    [Fact]
    public async Task BranchVotedAtAnEndpointNoLongerMapped_IsKept_NotGuessed()
    {
        var gid = NewGid();
        await VoteAsync(gid, "prepare");
        await using (var transaction = await Participant.Database.BeginAsync(CancellationToken.None))
        {
            await using var move = transaction.CreateCommand("UPDATE treaty_prepared SET endpoint = '/v0/branch' WHERE gid = @gid", ("gid", gid));
            await move.ExecuteNonQueryAsync();
            await transaction.CommitAsync(CancellationToken.None);
        }

        Time.Advance(After);
        var resolution = (await Participant.ResolveAsync()).ShouldHaveSingleItem();

        resolution.Result.ShouldBe(InDoubtResult.Failed);
        Participant.Runs(gid, "rollback").ShouldBe(0);
        (await Participant.PreparedAsync(gid)).ShouldNotBeNull().Checks.ShouldBe(1);
    }
}

public sealed class SqliteInDoubtResolverTests : InDoubtResolverCompliance
{
    protected override Task<TestDatabase> CreateDatabaseAsync() => Task.FromResult(TestDatabase.Sqlite("in-doubt"));
}

[Collection(PostgresCollection.Name)]
public sealed class PostgreSqlInDoubtResolverTests(PostgresFixture postgres) : InDoubtResolverCompliance
{
    protected override Task<TestDatabase> CreateDatabaseAsync() => TestDatabase.PostgreSqlAsync(postgres, "indoubt");
}
